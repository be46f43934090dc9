"""Leaderboard of the embedded MNIST prior: every registered method with MNIST configs × the six
tasks × NFE budgets 20, 50, 100 (and 250 for the methods whose configs are DDPM ones), on the
TEST digits (never used for tuning): the first ``--num`` (100) at 100 NFE, the first
``--num_other`` (32) at the other budgets; the same seeds and measurements for every method.

    python -m benchmarks.leaderboard                 # hours on a CPU; resumes where it stopped
    python -m benchmarks.leaderboard --quick         # 4 digits, 20 and 50 NFE, minutes; writes to a temp folder

Each method runs exactly as ``main.py`` runs its task config at the budget's respacing (its
``conditioning.tuned`` entry, see benchmarks/tune.py). Every cell (method, task, budget) is cached
in ``<out>/leaderboard_cache.jsonl`` (keyed by parameters, respacing, digits, seed, measurement and
a digest of the prior's checkpoint), so an interrupted run resumes and the tables can be redrawn
for free. Writes ``<out>/leaderboard.csv`` (one row per task, budget and method), ``leaderboard.md``
(the tables at 100 NFE, best method per task and budget, the Pareto front) and the figures
``leaderboard_psnr_nfe.png`` (PSNR against NFE) and ``leaderboard_psnr_seconds.png`` (against
seconds per image).

Metrics: PSNR / SSIM on (x + 1) / 2 clipped to [0, 1]; digit accuracy = the digit classifier
(util/digit_classifier.py, trained on the train split only) gives the reconstruction the label's
class; seconds per image = sampling wall time / digits at ``--threads`` torch threads and batch
``--batch_size``. ± is the standard error across digits; "ΔPSNR vs best" is the mean paired
difference to the best method of the task and budget with its paired standard error, and "wins"
counts the digits on which the method beats the best one.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from benchmarks.evaluate import (Cache, conditioning, select, MethodSpec, budgets_of, cache_key, key_params, diffusion_config,
                                 file_digest,
                                 mean_se, measurement_config, method_params, prior_digest, respacing_for, run_method)
from benchmarks.mnist_common import ROOT, TASKS
from util.config import load_yaml
from util.image_io import atomic_write_bytes, write_csv

log = logging.getLogger("benchmarks.leaderboard")

MAIN_BUDGET = 100
QUICK_BUDGETS = (20, 50)


# ---- the digit classifier (util/digit_classifier.py, from the prior's branch) -------------------
class Classifier:
    """The digit classifier if it is available (else every accuracy is nan and one warning says
    why). ``predict(u8)``: (N, 1, 32, 32) uint8 images -> (N,) int classes; ``digest`` names the
    weights so cached predictions die with them."""

    def __init__(self) -> None:
        self.model, self.digest, self.why = None, "none", ""
        try:
            from util import digit_classifier as dc
            self._dc = dc
            self.model = dc.load_classifier()
            self.digest = file_digest(dc.DEFAULT_PATH)
        except (ImportError, FileNotFoundError, ValueError) as exc:
            self.why = " ".join(str(exc).split())
            log.warning("digit accuracy not available: %s", self.why)

    def predict(self, u8: np.ndarray) -> list | None:
        """Predicted classes of uint8 images (N, 1, 32, 32), or None without a classifier."""
        if self.model is None:
            return None
        import torch
        x = torch.from_numpy(u8.astype(np.float32) / 127.5 - 1.0)
        return [int(c) for c in self._dc.predict_proba(self.model, x).argmax(axis=1)]


@dataclass
class Cell:
    """One (method, task, budget) result: per-digit scores and the run's facts."""
    method: str
    task: str
    budget: int
    respacing: str
    params: dict
    psnr: np.ndarray
    ssim: np.ndarray
    correct: np.ndarray      # 1.0 / 0.0 per digit, nan without a classifier
    seconds: float
    nfe: int
    tuned: bool = True       # the config holds values tuned at this respacing (tuned_respacing / tuned:)

    @property
    def n(self) -> int:
        return len(self.psnr)


def run_cell(spec: MethodSpec, task: str, budget: int, num: int, seed: int, batch_size: int, cache: Cache,
             clf: Classifier, labels: np.ndarray, recon_dir: str) -> Cell:
    """The cell of ``spec`` on ``task`` at ``budget`` NFE on the first ``num`` test digits, from the
    cache or computed (and cached). Reconstructions are kept as uint8 ``<recon_dir>/<key>.npy`` so
    that a later classifier can score them without re-running."""
    cond = conditioning(spec, task)
    base = cond.get("params") or {}
    respacing = respacing_for(spec, budget, base, task)
    tuned_at = {str(k) for k in (cond.get("tuned") or {})} | {str(cond.get("tuned_respacing"))}
    params = method_params(spec, task, respacing)
    key = cell_key(spec, task, budget, num, seed)
    rec = cache.get(key)
    recon_path = os.path.join(recon_dir, key + ".npy")
    if rec is None:
        log.info("running %s %s %s NFE (%s) on %d digits", spec.name, task, budget, respacing, num)
        s = run_method(spec, task, params, respacing, "test", num, seed, batch_size)
        if s.nfe != budget:
            log.warning("%s %s: the loop counted %d network calls per image for a budget of %d (nfe_per_step?)",
                        spec.name, task, s.nfe, budget)
        os.makedirs(recon_dir, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, s.recon)
        atomic_write_bytes(recon_path, buf.getvalue())
        rec = cache.put(key, dict(method=spec.name, task=task, budget=budget, respacing=respacing, params=params,
                                  psnr=s.psnr, ssim=s.ssim, seconds=s.seconds, nfe=s.nfe,
                                  pred=clf.predict(s.recon), classifier=clf.digest))
    elif rec.get("classifier") != clf.digest and clf.model is not None and os.path.isfile(recon_path):
        rec = cache.put(key, {**{k: v for k, v in rec.items() if k != "key"},
                              "pred": clf.predict(np.load(recon_path)), "classifier": clf.digest})
    pred = rec.get("pred") if rec.get("classifier") == clf.digest else None
    correct = (np.asarray(pred) == labels[:num]).astype(float) if pred is not None else np.full(num, np.nan)
    return Cell(spec.name, task, budget, respacing, params, np.asarray(rec["psnr"], float),
                np.asarray(rec["ssim"], float), correct, float(rec["seconds"]), int(rec["nfe"]),
                tuned=str(respacing) in tuned_at)


# ---- statistics ----------------------------------------------------------------------------------
def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """(mean of a − b, its paired standard error, number of digits where a > b) over the common
    prefix of two per-digit arrays."""
    n = min(len(a), len(b))
    d = np.asarray(a[:n], float) - np.asarray(b[:n], float)
    m, se = mean_se(d)
    return m, se, int((d > 0).sum())


#: Relative timing noise of the seconds-per-image column: cells measured in separate runs of a
#: shared 2-core machine differ by up to ~10 % at equal work (the seven one-forward methods at 20
#: NFE took 0.137-0.151 s), so costs within this factor count as equal on the Pareto front.
COST_TOL = 0.10


def pareto(points: list[tuple[float, float]], tol: float = 0.0) -> list[bool]:
    """For (cost, quality) points: True where no other point is at most as costly (within the
    relative tolerance ``tol``: cost2 <= cost * (1 + tol)) and strictly better, or strictly
    cheaper (cost2 * (1 + tol) < cost) and at least as good. ``tol = 0`` is the exact front;
    with ``tol > 0`` a point that is only cheaper by timing noise does not stay on the front
    against a better one."""
    out = []
    for i, (c, q) in enumerate(points):
        dominated = any((c2 <= c * (1 + tol) and q2 > q) or (c2 * (1 + tol) < c and q2 >= q)
                        for j, (c2, q2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def table_rows(cells: list[Cell], curve_num: int) -> list[dict]:
    """One CSV row per cell, with the paired comparison against the task-and-budget's best
    method (by PSNR and by SSIM) and the Pareto flag (PSNR of the first ``curve_num`` digits
    against seconds per image, over all methods and budgets of the task, costs within
    :data:`COST_TOL` counting as equal)."""
    rows = []
    for task in TASKS:
        tc = [c for c in cells if c.task == task]
        front = dict(zip([(c.method, c.budget) for c in tc],
                         pareto([(c.seconds, float(np.mean(c.psnr[:curve_num]))) for c in tc], COST_TOL)))
        for budget in sorted({c.budget for c in tc}):
            bc = [c for c in tc if c.budget == budget]
            best_p = max(bc, key=lambda c: np.mean(c.psnr))
            best_s = max(bc, key=lambda c: np.mean(c.ssim))
            for c in sorted(bc, key=lambda c: -np.mean(c.psnr)):
                pm, pse = mean_se(c.psnr)
                sm, sse = mean_se(c.ssim)
                am, ase = mean_se(c.correct)
                dp, dpse, wp = paired(c.psnr, best_p.psnr)
                ds, dsse, ws = paired(c.ssim, best_s.ssim)
                rows.append(dict(task=task, budget=budget, method=c.method, n=c.n, nfe=c.nfe, respacing=c.respacing,
                                 psnr=f"{pm:.3f}", psnr_se=f"{pse:.3f}", ssim=f"{sm:.4f}", ssim_se=f"{sse:.4f}",
                                 acc=f"{am:.3f}", acc_se=f"{ase:.3f}", seconds=f"{c.seconds:.3f}",
                                 best_psnr=best_p.method, dpsnr=f"{dp:.3f}", dpsnr_se=f"{dpse:.3f}",
                                 wins_psnr=f"{wp}/{min(c.n, best_p.n)}", best_ssim=best_s.method,
                                 dssim=f"{ds:.4f}", dssim_se=f"{dsse:.4f}", wins_ssim=f"{ws}/{min(c.n, best_s.n)}",
                                 pareto=int(front[(c.method, c.budget)]), tuned=int(c.tuned),
                                 params=" ".join(f"{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 else f"{k}={v}" for k, v in c.params.items())))
    return rows


def _pm(m: str, se: str, digits: int) -> str:
    m, se = float(m), float(se)
    if not np.isfinite(m):
        return "–"
    return f"{m:.{digits}f} ± {se:.{digits}f}" if np.isfinite(se) else f"{m:.{digits}f}"


def write_markdown(path: str, rows: list[dict], header: list[str], main_budget: int, skipped: list[str]) -> None:
    """The leaderboard as markdown: per task the table at ``main_budget``, then the best method per
    task and budget (by PSNR; "≈" when the runner-up is within two paired standard errors), and the
    methods on each task's Pareto front."""
    lines = list(header) + [""]
    lines.append(f"## Every method at {main_budget} NFE")
    for task in TASKS:
        sel = [r for r in rows if r["task"] == task and r["budget"] == main_budget]
        if not sel:
            continue
        lines += ["", f"### {task}", "",
                  "| method | PSNR (dB) | SSIM | digit acc. | s/img | NFE | ΔPSNR vs best | wins (PSNR) "
                  "| ΔSSIM vs best | wins (SSIM) | params |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sel:
            lines.append(f"| {r['method']} | {_pm(r['psnr'], r['psnr_se'], 2)} | {_pm(r['ssim'], r['ssim_se'], 3)} "
                         f"| {_pm(r['acc'], r['acc_se'], 2)} | {float(r['seconds']):.3g} | {r['nfe']} "
                         f"| {_pm(r['dpsnr'], r['dpsnr_se'], 2)} | {r['wins_psnr']} "
                         f"| {_pm(r['dssim'], r['dssim_se'], 3)} | {r['wins_ssim']} | {r['params']} |")
    budgets = sorted({r["budget"] for r in rows})
    lines += ["", "## Best method per task and budget (by mean PSNR; SSIM's best in brackets when different)", "",
              "| task | " + " | ".join(f"{b} NFE" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for task in TASKS:
        cells = []
        for b in budgets:
            sel = [r for r in rows if r["task"] == task and r["budget"] == b]
            if not sel:
                cells.append("–")
                continue
            best = sel[0]
            runner = sel[1] if len(sel) > 1 else None
            tie = runner is not None and np.isfinite(float(runner["dpsnr_se"])) and \
                abs(float(runner["dpsnr"])) < 2 * float(runner["dpsnr_se"])
            cell = f"{best['method']} {float(best['psnr']):.2f}" + (f" (≈ {runner['method']})" if tie else "")
            if best["best_ssim"] != best["method"]:
                cell += f" [{best['best_ssim']}]"
            cells.append(cell)
        if any(c != "–" for c in cells):
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "## Pareto front (PSNR against seconds per image, all budgets)", "",
              f"Seconds within {COST_TOL:.0%} of each other count as equal (timing noise between runs); "
              "PSNR of the digits every budget has.", "",
              "| task | on the front (method @ NFE) |", "|---|---|"]
    for task in TASKS:
        front = sorted((r for r in rows if r["task"] == task and r["pareto"]), key=lambda r: float(r["seconds"]))
        if front:
            lines.append(f"| {task} | " + ", ".join(f"{r['method']} @ {r['budget']}" for r in front) + " |")
    untuned = sorted({(r["method"], r["budget"]) for r in rows if not int(r.get("tuned", 1))},
                     key=lambda mb: (mb[1], mb[0]))
    if untuned:
        lines += ["", "**Not tuned at their budget** (these cells ran with values tuned at another step count; "
                  "run `python -m benchmarks.tune` for them before reading them as a fair ranking): "
                  + ", ".join(f"{m} @ {b}" for m, b in untuned) + "."]
    if skipped:
        lines += ["", "Registered methods not on the leaderboard: " + "; ".join(skipped) + "."]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def write_figures(out: str, cells: list[Cell], curve_num: int) -> list[str]:
    """``leaderboard_psnr_nfe.png`` and ``leaderboard_psnr_seconds.png``: one panel per task, one
    line per method, mean PSNR of the first ``curve_num`` digits (± SE) against NFE / seconds per
    image, log x axes. Returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = sorted({c.method for c in cells})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    paths = []
    for name, xkey, xlabel in (("psnr_nfe", "nfe", "NFE (network calls per image)"),
                               ("psnr_seconds", "seconds", "seconds per image")):
        tasks = [t for t in TASKS if any(c.task == t for c in cells)]
        rows_, cols_ = (1, len(tasks)) if len(tasks) <= 3 else (2, 3)
        fig, axes = plt.subplots(rows_, cols_, figsize=(4.4 * cols_, 3.8 * rows_ + 0.6), squeeze=False)
        for ax in list(axes.flat)[len(tasks):]:
            ax.set_visible(False)
        for ax, task in zip(axes.flat, tasks):
            for m in methods:
                mc = sorted((c for c in cells if c.task == task and c.method == m), key=lambda c: c.budget)
                if not mc:
                    continue
                xs = [getattr(c, xkey) for c in mc]
                stats = [mean_se(c.psnr[:curve_num]) for c in mc]
                ax.errorbar(xs, [s[0] for s in stats], yerr=[0 if not np.isfinite(s[1]) else s[1] for s in stats],
                            marker="o", ms=4, capsize=2, label=m, color=colors[m])
            ax.set_xscale("log")
            if xkey == "nfe":
                ticks = sorted({c.nfe for c in cells if c.task == task})
                ax.set_xticks(ticks, [str(t) for t in ticks])
                ax.minorticks_off()
            else:   # plain labels at 1-2-5 steps (log minor labels overlap on a short range)
                from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(task)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("PSNR (dB)")
            ax.grid(True, which="both", alpha=0.3)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        for ax in list(axes.flat)[1:len(tasks)]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8) or 1)
        fig.suptitle(f"MNIST test digits (first {curve_num}), mean PSNR ± SE against {xlabel}")
        fig.tight_layout(rect=(0, 0.06, 1, 0.96))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        path = os.path.join(out, f"leaderboard_{name}.png")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def registered_without_configs(specs: Mapping[str, Any]) -> list[str]:
    """Registered methods (aliases collapsed, ``none`` excluded) that have no MNIST configs."""
    from solvers.base import list_methods
    classes = list_methods()
    return [f"{cls.names[0]} (no configs/MNIST/methods/ table)" for cls in classes
            if cls.names and cls.names[0] not in specs and cls.names[0].lower() != "none"]


def cell_key(spec: MethodSpec, task: str, budget: int, num: int, seed: int) -> str:
    """The cache key of a cell (see :func:`run_cell`)."""
    base = conditioning(spec, task).get("params") or {}
    respacing = respacing_for(spec, budget, base, task)
    return cache_key(kind="leaderboard", method=spec.name, task=task, respacing=respacing,
                     params=key_params(spec.name, method_params(spec, task, respacing)), split="test", num=num, seed=seed,
                     measurement=measurement_config(task), diffusion=diffusion_config(spec), prior=prior_digest())


def digits_phrase(num: int, num_other: int, budgets: set[int]) -> str:
    """How many test digits each budget of the run used, e.g. "first 100 at 100 NFE, first 32 at
    the other budgets" (only the parts that apply to ``budgets``)."""
    parts = []
    if MAIN_BUDGET in budgets:
        parts.append(f"first {num} at {MAIN_BUDGET} NFE")
    if budgets - {MAIN_BUDGET}:
        parts.append(f"first {num_other} at " + ("the other budgets" if parts else
                                                 ", ".join(str(b) for b in sorted(budgets)) + " NFE"))
    return ", ".join(parts)


def print_plan(plan: list, specs: Mapping[str, MethodSpec], cache: Cache, main_budget: int, num: int,
               num_other: int, seed: int) -> int:
    """Print, per method, the cells not yet in the cache and their network calls × digits (the
    cost unit: multiply by the measured ms per call per digit, docs/benchmarks_leaderboard.md)."""
    todo: dict[str, list] = {}
    for b, name, task in plan:
        n = num if b == main_budget else num_other
        if cache.get(cell_key(specs[name], task, b, n, seed)) is None:
            todo.setdefault(name, []).append(n * b)
    total = len(plan)
    left = sum(len(v) for v in todo.values())
    print(f"{total - left} of {total} cells cached; " + ("to run:" if left else "nothing to run (the next run only "
                                                             "redraws leaderboard.md / .csv and the figures)"))
    for name, calls in todo.items():
        print(f"  {name:10s} {len(calls):3d} cells, {sum(calls):8d} network calls × digits")
    return 0


def main(argv=None) -> int:
    """Run (or resume) the leaderboard and write its tables and figures; returns 0 (2 for bad
    arguments)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="all", help="comma list of registered names, or all")
    p.add_argument("--tasks", default="all", help=f"comma list of {', '.join(TASKS)}, or all")
    p.add_argument("--budgets", default=None, help="comma list of NFE budgets (default: each method's own: "
                   "20,50,100 and 250 for DDPM methods; --quick: 20,50)")
    p.add_argument("--num", type=int, default=None, help=f"test digits at {MAIN_BUDGET} NFE (default 100; quick 4)")
    p.add_argument("--num_other", type=int, default=None, help="test digits at other budgets (default 32; quick 4)")
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    p.add_argument("--quick", action="store_true", help="4 digits, 20 and 50 NFE; writes to a new temp folder "
                   "unless --out is given")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results; quick: a temp folder)")
    p.add_argument("--plan", action="store_true", help="print the cells still to run (and their network calls "
                   "× digits per method) and exit")
    a = p.parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("util.config").setLevel(logging.WARNING)   # the tuned values are in the tables
    num = a.num if a.num is not None else (4 if a.quick else 100)
    num_other = a.num_other if a.num_other is not None else (4 if a.quick else 32)
    out = a.out or (tempfile.mkdtemp(prefix="leaderboard_quick_") if a.quick
                    else os.path.join(ROOT, "benchmarks", "results"))
    try:
        specs, methods, tasks = select(a.methods, a.tasks)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        budgets = [int(b) for b in a.budgets.split(",")] if a.budgets else (list(QUICK_BUDGETS) if a.quick else None)
    except ValueError:
        print(f"error: --budgets must be a comma list of integers, got {a.budgets!r}", file=sys.stderr)
        return 2
    if num < 1 or num_other < 1 or num > 250 or num_other > 250:
        print("error: --num and --num_other must be in 1..250 (the test split)", file=sys.stderr)
        return 2
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    from data.mnist import load_mnist32
    labels = load_mnist32("test")[1]
    clf = Classifier()
    cache = Cache(os.path.join(out, "leaderboard_cache.jsonl"))
    recon_dir = os.path.join(out, "leaderboard_cache", "recon")
    plan = []
    for name in methods:
        spec = specs[name]
        for b in (budgets or budgets_of(spec)):
            for task in tasks:
                if task in spec.configs:
                    plan.append((b, name, task))
    plan.sort(key=lambda x: (x[0], x[1], TASKS.index(x[2])))   # cheap budgets first
    # The budget of the per-method tables (100 NFE, else the largest run); the digit counts do not follow it.
    main_budget = MAIN_BUDGET if any(b == MAIN_BUDGET for b, _, _ in plan) else max(b for b, _, _ in plan)
    differ = sorted({f"{name} {task}" for _, name, task in plan
                     if load_yaml(specs[name].configs[task], "task config").get("measurement")
                     != measurement_config(task)})
    if differ:
        log.warning("the measurement section of %s differs from configs/MNIST/DDIM/<task>_config.yaml; the "
                    "leaderboard gives every method that one", ", ".join(differ))
    if a.plan:
        return print_plan(plan, specs, cache, MAIN_BUDGET, num, num_other, a.seed)
    cells = []
    header = [f"# MNIST leaderboard (embedded prior, digest {prior_digest()})", "",
              f"Test digits: {digits_phrase(num, num_other, {b for b, _, _ in plan})}; seed {a.seed}; "
              f"σ_n = 0.05 on [-1, 1]; PSNR (dB) / SSIM on [0, 1] (clip); ± = standard error across digits; "
              f"s/img on {platform.processor() or platform.machine()} with {torch.get_num_threads()} torch "
              f"thread(s), batch {a.batch_size}. Command: `python -m benchmarks.leaderboard {' '.join(argv_list)}`."]
    if clf.model is not None:
        from data.mnist import to_model_range
        imgs = load_mnist32("test")[0][:max(num, num_other)]
        acc = float(np.mean(np.asarray(clf.predict(((to_model_range(imgs) + 1) * 127.5).round().astype(np.uint8)))
                            == labels[:len(imgs)]))
        header.append(f"Digit classifier (util/digit_classifier.py, digest {clf.digest}): {acc:.1%} on the same "
                      f"{len(imgs)} clean test digits.")
    else:
        header.append(f"Digit accuracy not available: {clf.why}")
    if differ:
        header.append(f"Configs whose own measurement section differs (run here with the common one): "
                      f"{', '.join(differ)}.")
    try:
        for b, name, task in plan:
            n = num if b == MAIN_BUDGET else num_other   # --num belongs to 100 NFE, whatever --budgets
            cells.append(run_cell(specs[name], task, b, n, a.seed, a.batch_size, cache, clf, labels, recon_dir))
            c = cells[-1]
            print(f"{task:20s} {name:8s} {b:4d} NFE  PSNR {np.mean(c.psnr):6.2f}  SSIM {np.mean(c.ssim):.3f}  "
                  f"acc {np.nanmean(c.correct) if np.isfinite(c.correct).any() else float('nan'):.2f}  "
                  f"{c.seconds:6.3f} s/img  (n {c.n}, NFE {c.nfe})", flush=True)
    except ValueError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    curve_num = min(num, num_other)
    rows = table_rows(cells, curve_num)
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, "leaderboard.csv"), list(rows[0]), rows)
    write_markdown(os.path.join(out, "leaderboard.md"), rows, header, main_budget, registered_without_configs(specs))
    write_figures(out, cells, curve_num)
    print(f"wrote {os.path.join(out, 'leaderboard.md')}, .csv and the figures", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
