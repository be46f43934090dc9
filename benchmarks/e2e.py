"""Whole-process timing of the main job: ``python main.py ...`` run as a subprocess (model load,
data, sampling, metrics, writing), for every registered solver, at 32×32 (the embedded MNIST
prior) and 256×256 (the FFHQ architecture with random weights), in each precision mode, reported
as images per hour.

    python -m benchmarks.speed --e2e                 # = python -m benchmarks.e2e
    python -m benchmarks.e2e --quick                 # seconds; writes to a temporary folder
    python -m benchmarks.e2e --compile               # torch.compile off / on, CoDPS+ (compile_<device>.md)
    python -m benchmarks.e2e --throughput --device cuda --sizes 256   # batch 1 and the largest batch

Runs go through ``main.py`` itself, so that the figures are those of the user's command whatever
the sampling code looks like inside. Extrapolation, where fewer steps than 100 are run (the
256×256 default): the sampling time of an image (``seconds`` in metrics.csv, the sampling loop
alone) is scaled by 100 / steps, since every DDIM step costs one network forward (and, for the
gradient methods, one backward); the rest of the process (start-up, model load, speed probe,
data, metrics, writing: wall time − sampling time) is counted as measured, once per run. Images
per hour = 3600 × images / (rest + images × sampling seconds per image × 100 / steps).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

RESULTS = os.path.join(ROOT, "benchmarks", "results")
TARGET_STEPS = 100
#: Per size: model config, diffusion config, task config, model overrides. 256 has random weights.
SIZES = {
    "32": ("configs/MNIST/DDIM/model_config.yaml", "configs/MNIST/DDIM/diffusion_config.yaml",
           "configs/MNIST/DDIM/super_resolution_x2_config.yaml", []),
    "256": ("configs/FFHQ/DDIM/model_config.yaml", "configs/FFHQ/DDIM/diffusion_config.yaml",
            "configs/FFHQ/DDIM/super_resolution_config.yaml", ["model.model_path="]),
}
#: Batches tried by ``--throughput`` (2-step runs, growing until one fails or the budget is spent).
THROUGHPUT_BATCHES = (4, 16, 64, 128, 256, 512, 1024)
#: Precision modes: the ``model.use_fp16`` value of each.
PRECISIONS = {"fp32": "false", "half": "true", "auto": "auto"}


def registered_methods() -> list[str]:
    """One name per registered solver class (its first registered name), in registry order of
    the first names sorted case-insensitively; new solvers are picked up by themselves."""
    from solvers.base import _REGISTRY
    seen: dict[type, str] = {}
    for name, cls in _REGISTRY.items():
        seen.setdefault(cls, cls.names[0] if getattr(cls, "names", None) else name)
    return sorted(seen.values(), key=str.lower)


def method_params(method: str, dataset: str, operator: str) -> tuple[dict, str]:
    """Parameters for ``method`` from a shipped task config of ``dataset`` (configs/<dataset>/) or
    its method table (configs/<dataset>/methods/<method>.yaml, a task entry), preferring one with
    the same operator and the DDIM folder; ({}, "defaults") when none names the method. Returns
    (params, the config's path, or the table's with the task, or "defaults")."""
    from solvers.base import _REGISTRY
    from util.config import load_yaml
    cls = _REGISTRY.get(method)
    names = {n.lower() for n in (getattr(cls, "names", None) or (method,))}
    found = []
    folder = os.path.join(ROOT, "configs", dataset)
    for sub in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, sub)
        for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
            if not name.endswith(".yaml"):
                continue
            try:
                cfg = load_yaml(os.path.join(path, name))
            except Exception:  # noqa: BLE001 - any unreadable file is simply not a candidate
                continue
            cond = cfg.get("conditioning")
            if isinstance(cond, dict) and "task" not in cond and str(cond.get("method", "")).lower() in names:
                op = ((cfg.get("measurement") or {}).get("operator") or {}).get("name")
                rank = (op != operator, sub != "DDIM")
                found.append((rank, os.path.relpath(os.path.join(path, name), ROOT), dict(cond.get("params") or {})))
    tables = os.path.join(folder, "methods")   # composed configs: the method tables (builder.compose_conditioning)
    for name in sorted(os.listdir(tables)) if os.path.isdir(tables) else []:
        table = load_yaml(os.path.join(tables, name), "method table")
        if str(table.get("method", "")).lower() not in names:
            continue
        sub = str(table.get("sampling", "DDIM"))
        for task, entry in (table.get("tasks") or {}).items():
            task_path = os.path.join(folder, sub, f"{task}_config.yaml")
            if not os.path.isfile(task_path):
                continue
            op = ((load_yaml(task_path).get("measurement") or {}).get("operator") or {}).get("name")
            found.append(((op != operator, sub != "DDIM"), f"{os.path.relpath(os.path.join(tables, name), ROOT)} [{task}]",
                          {**(table.get("defaults") or {}), **(entry.get("params") or {})}))
    if not found:
        return {}, "defaults"
    found.sort(key=lambda f: f[0])
    return found[0][2], found[0][1]


def make_images(folder: str, n: int, size: int, channels: int = 3, seed: int = 0) -> str:
    """Write ``n`` smooth random test images (size × size PNGs, seeded) to ``folder``."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.random((8, 8, channels))
        if os.path.isfile(os.path.join(folder, f"{i:05d}.png")):
            continue
        img = np.kron(low, np.ones((size // 8, size // 8, 1)))
        img = (255 * img).astype(np.uint8)
        Image.fromarray(img[..., 0] if channels == 1 else img).save(os.path.join(folder, f"{i:05d}.png"))
    return folder


def run_main(size: str, method: str, precision: str, steps: int, images: int, batch: int, work: str,
             device: str, threads: int, extra: Sequence[str] = (), timeout_s: float = 3600) -> dict:
    """Run ``main.py`` once and return its timing row (see the module docstring); a run that
    fails gives a row with ``status`` "error: <last line of stderr>"."""
    model_cfg, diffusion_cfg, task_cfg, model_over = SIZES[size]
    from util.config import load_yaml
    task = load_yaml(os.path.join(ROOT, task_cfg))
    operator = task["measurement"]["operator"]["name"]
    params, source = method_params(method, "MNIST" if size == "32" else "FFHQ", operator)
    tag = f"{size}_{method}_{precision}_{steps}_{'_'.join(extra)}".replace("+", "plus").replace("=", "-").replace("/", "_")
    save_dir = os.path.join(work, "runs", tag)
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--model_config", model_cfg,
           "--diffusion_config", diffusion_cfg, "--task_config", task_cfg, "--save_dir", save_dir,
           "--device", device, "--batch_size", str(batch), "--num_images", str(images), "--overwrite",
           *model_over, f"model.use_fp16={PRECISIONS[precision]}", f"diffusion.timestep_respacing=ddim{steps}",
           f"task.conditioning.method={method}", "task.conditioning.params=" + json.dumps(params), *extra]
    if size != "32":
        cmd.append("task.data.root=" + make_images(os.path.join(work, f"images{size}"), images, int(size)))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    row: dict[str, Any] = {"size": int(size), "method": method, "params_from": source, "mode": precision,
                           "steps": steps, "images": images, "batch": batch, "extra": " ".join(extra)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    row["wall_s"] = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        row["status"] = f"error (exit {proc.returncode}): {lines[-1] if lines else ''}"[:300]
        return row
    import glob
    found = glob.glob(os.path.join(save_dir, "**", "summary.json"), recursive=True)   # the one run of save_dir
    out_dir = os.path.dirname(found[0]) if len(found) == 1 else save_dir
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(os.path.join(out_dir, "metrics.csv"), encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("seconds")]
    sampling = sum(float(r["seconds"]) for r in rows)
    rest = row["wall_s"] - sampling
    per_image_100 = sampling / len(rows) * TARGET_STEPS / steps
    total_100 = rest + len(rows) * per_image_100
    psnrs = [float(r["psnr"]) for r in rows if r.get("psnr") not in (None, "")]
    row.update({"status": "ok", "precision": summary.get("precision"), "channels_last": summary.get("channels_last"),
                "compile": summary.get("compile"), "precision_reason": summary.get("precision_reason"),
                "sampling_s": sampling, "rest_s": rest, "s_per_image_100": per_image_100,
                "s_per_step": sampling / len(rows) / steps, "images_per_hour_100": 3600 * len(rows) / total_100,
                "psnr": float(np.mean(psnrs)) if psnrs else None, "scaled": steps != TARGET_STEPS})
    return row


def machine(threads: int, device: str) -> dict:
    """The machine and software the figures were measured on."""
    import torch
    from guided_diffusion.precision import detect_capabilities
    caps = detect_capabilities("cpu")
    info = {"cpu": caps.machine, "cpu_capability": caps.cpu_capability, "cpu_native_bf16": caps.cpu_bf16,
            "logical_cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = detect_capabilities(device).machine
    return info


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def report(results: dict) -> str:
    """Markdown of an e2e run."""
    m = results["machine"]
    lines = [f"# End-to-end speed of the main job ({results['device']})", "",
             f"`{results['command']}`, {results['date']}, {results['seconds']:.0f} s.", "",
             f"Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs; capability {m['cpu_capability']}, "
             f"native bf16 {m['cpu_native_bf16']}){', GPU ' + m['gpu'] if m.get('gpu') else ''}; torch {m['torch']}, "
             f"{m['threads']} thread(s).", "",
             "Each row is one `python main.py` process (DDIM, task super-resolution; 32: the embedded MNIST prior, "
             "256: the FFHQ architecture with random weights, smooth random test images). `s/img@100`: sampling "
             "seconds per image scaled to 100 steps (× 100 / steps); `rest`: wall − sampling (start-up, model load, "
             "speed probe, data, metrics, writing), counted once per run; `img/h@100` = 3600 × images / "
             "(rest + images × s/img@100). Rows with steps < 100 are scaled that way, not measured at 100 steps.",
             ""]
    cols = ["size", "method", "mode", "precision", "channels_last", "steps", "images", "batch", "wall_s", "rest_s",
            "s_per_step", "s_per_image_100", "images_per_hour_100", "psnr", "status"]
    heads = ["size", "method", "mode", "used", "NHWC", "steps", "images", "batch", "wall (s)", "rest (s)", "s/step",
             "s/img@100", "img/h@100", "PSNR", "status"]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in results["rows"]:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    params = sorted({(r["method"], r.get("params_from", "")) for r in results["rows"]})
    lines += ["", "Parameters: " + "; ".join(f"{m} from {s}" for m, s in params) + "."]
    return "\n".join(lines) + "\n"


def compile_report(results: dict) -> str:
    """Markdown of a compile comparison."""
    m = results["machine"]
    lines = [f"# torch.compile against eager ({results['device']})", "",
             f"`{results['command']}`, {results['date']}, {results['seconds']:.0f} s.", "",
             f"Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs; capability {m['cpu_capability']}), torch "
             f"{m['torch']}, {m['threads']} thread(s). CoDPS+, DDIM, super-resolution, precision and layout `auto`. "
             "Whole `python main.py` processes; compile time falls in the first step of the compiled run.", ""]
    lines += ["| size | compile | steps | images | batch | wall (s) | sampling (s) | precision | status |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['size']} | {r['compile_setting']} | {r['steps']} | {r['images']} | {r['batch']} | "
                     f"{_fmt(r.get('wall_s'), '.1f')} | {_fmt(r.get('sampling_s'), '.1f')} | {_fmt(r.get('precision'))} | "
                     f"{r['status']} |")
    lines += ["", "## At 100 steps", "",
              "32×32: measured at 100 steps. Fewer steps (256×256): from two runs of S1 < S2 steps, "
              "per-step = (wall(S2) − wall(S1)) / (S2 − S1), fixed = wall(S1) − S1 × per-step (start-up, load, compile, "
              "first-call costs), wall(100) = fixed + 100 × per-step.", "",
              "| size | images | eager wall@100 (s) | compiled wall@100 (s) | speed-up | eager s/step | compiled s/step | "
              "compiled fixed − eager fixed (s) |", "|---|---|---|---|---|---|---|---|"]
    for e in results["extrapolated"]:
        lines.append(f"| {e['size']} | {e['images']} | {_fmt(e['eager_100'], '.1f')} | {_fmt(e['compiled_100'], '.1f')} | "
                     f"{_fmt(e['speedup'], '.3f')} | {_fmt(e.get('eager_step'), '.3g')} | {_fmt(e.get('compiled_step'), '.3g')} | "
                     f"{_fmt(e.get('extra_fixed'), '.1f')} |")
    return "\n".join(lines) + "\n"


def _at_100(rows: Sequence[dict]) -> tuple[float | None, float | None, float | None]:
    """(wall at 100 steps, per-step, fixed) from ok rows of one setting (one or two step counts)."""
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["steps"])
    if not ok:
        return None, None, None
    if ok[-1]["steps"] == TARGET_STEPS:
        return ok[-1]["wall_s"], None, None
    if len(ok) < 2:
        return None, None, None
    a, b = ok[0], ok[-1]
    step = (b["wall_s"] - a["wall_s"]) / (b["steps"] - a["steps"])
    if step <= 0:   # the machine's load changed between the runs, or a cache warmed: no estimate
        return None, step, None
    fixed = a["wall_s"] - a["steps"] * step
    return fixed + TARGET_STEPS * step, step, fixed


def run_compile(args: argparse.Namespace, work: str) -> dict:
    """Compile off / on for CoDPS+ at each size: 32 at 100 steps; 256 at two reduced step counts."""
    rows = []
    for size in args.sizes:
        images = args.images if size == "32" else args.images_256
        batch = min(args.batch, images)
        step_counts = [args.steps] if size == "32" else args.compile_steps_256
        for steps in step_counts:
            for setting in ("false", "true"):
                row = run_main(size, "CoDPS+", "auto", steps, images, batch, work, args.device, args.threads,
                               extra=[f"model.compile={setting}"], timeout_s=args.timeout_s)
                row["compile_setting"] = setting
                print(json.dumps(row), flush=True)
                rows.append(row)
    return {"rows": rows, "extrapolated": extrapolate_compile(rows, args.sizes)}


def extrapolate_compile(rows: Sequence[dict], sizes: Sequence[str]) -> list[dict]:
    """Eager and compiled wall time at 100 steps per size (see :func:`_at_100`)."""
    extrapolated = []
    for size in sizes:
        sel = [r for r in rows if str(r["size"]) == size]
        e_100, e_step, e_fixed = _at_100([r for r in sel if r["compile_setting"] == "false"])
        c_100, c_step, c_fixed = _at_100([r for r in sel if r["compile_setting"] == "true"])
        extrapolated.append({"size": int(size), "images": sel[0]["images"] if sel else None, "eager_100": e_100,
                             "compiled_100": c_100, "speedup": (e_100 / c_100) if e_100 and c_100 else None,
                             "eager_step": e_step, "compiled_step": c_step,
                             "extra_fixed": (c_fixed - e_fixed) if c_fixed is not None and e_fixed is not None else None})
    return extrapolated


def run_throughput(args: argparse.Namespace, work: str) -> dict:
    """CoDPS+ (``use_fp16: auto``) at ``args.sizes[0]``: a ``args.steps``-step run at batch 1, then
    2-step runs at growing batches (:data:`THROUGHPUT_BATCHES` up to ``--max_batch``) until one
    fails (out of memory) or ``--budget_s`` is spent, then a run at the largest batch that fitted
    (with fewer steps, scaled, when 100 would not fit in the budget). Images per minute from the
    sampling time and from the whole process."""
    start = time.perf_counter()
    size = args.sizes[0]
    rows, fits = [], []

    def one(images: int, steps: int, role: str) -> dict:
        row = run_main(size, "CoDPS+", "auto", steps, images, images, work, args.device, args.threads,
                       timeout_s=args.timeout_s)
        row["role"] = role
        if row["status"] == "ok":
            row["images_per_min_sampling"] = 60 * images / row["sampling_s"] * steps / TARGET_STEPS
            row["images_per_min_wall"] = 60 * images / (row["rest_s"] + row["sampling_s"] * TARGET_STEPS / steps)
        print(json.dumps(row), flush=True)
        rows.append(row)
        return row

    one(1, args.steps, "batch 1")
    for b in [b for b in THROUGHPUT_BATCHES if b <= args.max_batch]:
        if time.perf_counter() - start > args.budget_s / 2:
            break
        row = one(b, 2, "fits?")
        if row["status"] != "ok":
            break
        fits.append(row)
    if fits:
        best = fits[-1]
        per_step = best["sampling_s"] / 2
        left = max(args.budget_s - (time.perf_counter() - start), 0.0)
        steps = args.steps if per_step * args.steps < left / 2 else max(2, int(left / 2 / per_step))
        one(best["images"], min(steps, args.steps), "largest batch")
    return {"rows": rows, "size": int(size), "max_batch": args.max_batch}


def throughput_report(results: dict) -> str:
    """Markdown of a throughput run, against the issue's targets (≤ 1 s per image at batch 1,
    ≥ 1,000 images per minute at a large batch)."""
    m = results["machine"]
    lines = [f"# CoDPS+ DDIM-{TARGET_STEPS} throughput, {results['size']}×{results['size']} ({results['device']})", "",
             f"`{results['command']}`, {results['date']}, {results['seconds']:.0f} s.", "",
             f"Machine: {m.get('gpu') or m['cpu']}; torch {m['torch']}. CoDPS+ super-resolution, use_fp16 / "
             "channels_last auto, random weights; whole `python main.py` processes. `img/min sampling`: the sampling "
             f"loop alone, scaled to {TARGET_STEPS} steps; `img/min wall`: the whole process (start-up, load, data, "
             "metrics, PNGs) with the sampling scaled to 100 steps. Targets: ≤ 1 s per image at batch 1, ≥ 1,000 "
             "images per minute at a large batch.", "",
             "| role | batch | steps | precision | NHWC | s/img@100 | img/min sampling | img/min wall | wall (s) | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['role']} | {r['images']} | {r['steps']} | {_fmt(r.get('precision'))} | "
                     f"{_fmt(r.get('channels_last'))} | {_fmt(r.get('s_per_image_100'))} | "
                     f"{_fmt(r.get('images_per_min_sampling'), '.4g')} | {_fmt(r.get('images_per_min_wall'), '.4g')} | "
                     f"{_fmt(r.get('wall_s'), '.1f')} | {r['status']} |")
    return "\n".join(lines) + "\n"


def compile_forward(size: str, device: str, repeats: int = 3) -> dict:
    """In one process: the FFHQ (256) or MNIST (32) UNet as configured (``auto`` precision and
    layout), eager and ``torch.compile``-d, batch 1. Seconds of the compiled model's first call
    (compiling; inductor's on-disk cache makes it shorter on a machine that compiled the same
    graphs before), then ``repeats`` alternating timed calls of each (medians)."""
    import statistics
    import torch
    from builder import build_model
    from util.config import load_yaml
    cfg = load_yaml(os.path.join(ROOT, SIZES[size][0]))
    cfg.update(model_path="", compile=False)
    torch.manual_seed(0)
    model = build_model(cfg, device)
    x = torch.randn(1, model.in_channels, model.image_size, model.image_size, device=device)
    t = torch.full((1,), 500, device=device)
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    compiled = torch.compile(model)
    with torch.inference_mode():
        model(x, t)
        sync()
        start = time.perf_counter()
        compiled(x, t)
        sync()
        first = time.perf_counter() - start
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(repeats):
            for name, fn in (("eager", model), ("compiled", compiled)):
                start = time.perf_counter()
                fn(x, t)
                sync()
                times[name].append(time.perf_counter() - start)
    eager, comp = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"size": int(size), "precision": model.speed_settings["precision"],
            "channels_last": model.speed_settings["channels_last"], "first_compiled_call_s": first,
            "eager_forward_s": eager, "compiled_forward_s": comp, "times": times,
            "compile_overhead_s": first - comp,
            "wall_change_at_100_steps_s": first - comp + TARGET_STEPS * (comp - eager)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of ``python -m benchmarks.e2e`` (also ``python -m benchmarks.speed --e2e``)."""
    p = argparse.ArgumentParser(description="Whole-process timing of main.py per method, size and precision.")
    p.add_argument("--quick", action="store_true",
                   help="seconds: 32×32 only, 1 image, 2 steps, mode auto; writes to a temporary folder")
    p.add_argument("--compile", action="store_true", help="compare model.compile false / true for CoDPS+ instead")
    p.add_argument("--compile_forward", action="store_true",
                   help="one process: compile time and eager / compiled forward at the first of --sizes (JSON)")
    p.add_argument("--throughput", action="store_true",
                   help="CoDPS+ at batch 1 and at the largest batch that fits instead (first of --sizes)")
    p.add_argument("--max_batch", type=int, default=256, help="--throughput: largest batch tried")
    p.add_argument("--budget_s", type=float, default=240, help="--throughput: time budget in seconds")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (main.py's --device)")
    p.add_argument("--threads", type=int, default=1, help="OMP threads of each main.py process (default 1)")
    p.add_argument("--sizes", default="32,256", help="comma-separated subset of 32,256")
    p.add_argument("--methods", default=None, help="comma-separated solver names (default: every registered solver)")
    p.add_argument("--modes", default="fp32,half,auto", help="precision modes: fp32 (use_fp16 false), half (true), auto")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps at 32×32 (default 100)")
    p.add_argument("--images", type=int, default=16, help="images at 32×32 (default 16)")
    p.add_argument("--steps_256", type=int, default=2, help="DDIM steps at 256×256 (scaled to 100; default 2)")
    p.add_argument("--images_256", type=int, default=1, help="images at 256×256 (default 1)")
    p.add_argument("--compile_steps_256", default="2,4", help="--compile: the two step counts at 256×256")
    p.add_argument("--batch", type=int, default=16, help="--batch_size of main.py (capped at the images)")
    p.add_argument("--timeout_s", type=float, default=3600, help="per main.py process")
    p.add_argument("--out", default=None,
                   help="folder of the results (default benchmarks/results; --quick: a new temporary folder)")
    p.add_argument("--work", default=None, help="folder for the runs' outputs (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.images, args.steps, args.modes = "32", 1, 2, "auto"
    args.sizes = [s for s in args.sizes.split(",") if s]
    bad = [s for s in args.sizes if s not in SIZES]
    args.modes = [m for m in args.modes.split(",") if m]
    bad_modes = [m for m in args.modes if m not in PRECISIONS]
    if bad or bad_modes:
        p.error(f"unknown size(s) {bad} or mode(s) {bad_modes}; valid: sizes {list(SIZES)}, modes {list(PRECISIONS)}")
    args.compile_steps_256 = [int(s) for s in args.compile_steps_256.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes <out>/speed_e2e_<device>[ _quick].{json,md} or compile_<device>.{json,md}."""
    args = parse_args(argv)
    if args.compile_forward:
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(compile_forward(args.sizes[0], args.device), indent=1))
        return 0
    start, date = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S")
    command = "python -m benchmarks.e2e " + " ".join(sys.argv[1:] if argv is None else argv)
    out = args.out or (tempfile.mkdtemp(prefix="codps_e2e_") if args.quick else RESULTS)
    dev = args.device.split(":")[0]
    with tempfile.TemporaryDirectory(prefix="codps_e2e_work_") as tmp:
        work = args.work or tmp
        if args.compile:
            results = run_compile(args, work)
            name = f"compile_{dev}"
        elif args.throughput:
            results = run_throughput(args, work)
            name = f"speed_{dev}_throughput"
        else:
            methods = args.methods.split(",") if args.methods else registered_methods()
            rows = []
            for size in args.sizes:
                steps, images = (args.steps, args.images) if size == "32" else (args.steps_256, args.images_256)
                for method in methods:
                    for mode in args.modes:
                        row = run_main(size, method, mode, steps, images, min(args.batch, images), work, args.device,
                                       args.threads, timeout_s=args.timeout_s)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
            results = {"rows": rows}
            name = f"speed_e2e_{dev}" + ("_quick" if args.quick else "")
    results.update({"command": command, "date": date, "seconds": time.perf_counter() - start, "device": args.device,
                    "machine": machine(args.threads, args.device)})
    from util.image_io import atomic_write_bytes, save_json
    os.makedirs(out, exist_ok=True)
    save_json(os.path.join(out, name + ".json"), results)
    text = (compile_report(results) if args.compile else throughput_report(results) if args.throughput
            else report(results))
    atomic_write_bytes(os.path.join(out, name + ".md"), text.encode("utf-8"))
    print(text)
    print(f"written: {os.path.join(out, name)}.json / .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
