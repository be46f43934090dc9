"""Tune a method's main parameter(s) for one MNIST task and one NFE budget, on the TUNE digits
only, with the same evaluation budget for every method:

    python -m benchmarks.tune --method CoDPS+ --task gaussian_deblur --budget 100 [--apply]
    python -m benchmarks.tune --method all --task all --budget all        # the whole grid
    python -m benchmarks.tune --method DDRM --task gaussian_deblur --budget 100 --sweep \
        --sigma_max 1 2 3 --param eta=0.85,1            # a fixed sweep: time grids x values
    python -m benchmarks.tune --method all --task all --budget all --apply --from_results

Search (see :func:`grid_search` and :func:`tpe_search`):

* one parameter: a transparent log-spaced grid of ``--init`` points over the method's range;
  while the best point is the smallest or largest evaluated, one more point one grid step
  beyond it (up to the parameter's bound); then log-midpoints around the best until
  ``--max_evals`` evaluations (more only when the edge extension needed them);
* two parameters: optuna's TPE sampler (seeded) over the log ranges, extended by √(hi/lo)
  on a side while the best lies in its outer fifth, a few trials per extension; then, while a
  parameter's best is still the largest or smallest evaluated, up to 4 line-search probes move
  it outwards to the range end or its hard bound (:func:`edge_probe`).

The search space lives in :data:`SPACES` (one line per method, keyed by its registered name);
a method without a line tunes ``scale`` (else its first numeric parameter) over ×/÷ 10 around
its configured value. Parameters counted in reverse steps (``t_div``) are rescaled with the step
count (t_div · steps / steps of the config's default respacing) and written with the choice.

Criterion: mean PSNR over the tune digits (``--metric ssim`` possible); the best by the other
metric is reported too. Every evaluation is cached (``<out>/cache.jsonl``, keyed by method,
parameters, respacing, digits, seed, measurement and a digest of the prior's checkpoint), so a
run resumes and a finished one re-runs in seconds. Output per run: ``<out>/<method>_<task>_<budget>
[_ssim].csv`` (every evaluation) and ``.json`` (the choice); ``<out>/chosen.csv`` / ``.md``
summarise every run in the folder. ``--apply`` writes the choice into the method's table
``configs/MNIST/methods/<method>.yaml``, entry <task>: ``tuned.<respacing>`` (read by main.py at
that respacing) and, at the table's own respacing, ``params`` too. ``--apply --from_results``
writes every committed choice (``<out>/*.json``) without running anything, e.g. after merging
branches whose old-layout configs ``python -m tools.compose_configs`` converted.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from benchmarks.evaluate import (Cache, conditioning, select, MethodSpec, budgets_of, cache_key, key_params, diffusion_config,
                                 measurement_config, mean_se, method_params, prior_digest, respacing_for, run_method,
                                 solver_class, steps_of, time_grid)
from benchmarks.mnist_common import ROOT, TASKS
from guided_diffusion.respace import grid_respacing
from util.config import ConfigLoader, load_yaml
from util.image_io import atomic_write_bytes, write_csv

log = logging.getLogger("benchmarks.tune")

METRICS = ("psnr", "ssim")


@dataclass(frozen=True)
class Space:
    """Search space of one method.

    Attributes:
        ranges: {parameter: (low, high)}, the initial log-spaced range (one or two parameters).
        per_step: parameters counted in reverse steps, rescaled with the step count.
        bounds: {parameter: (min, max)} hard limits of the edge extension (default (0, inf),
            both exclusive of 0).
    """
    ranges: Mapping[str, tuple[float, float]]
    per_step: tuple[str, ...] = ()
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)


#: The one place where search spaces are defined, keyed by registered method name.
#: A new method needs one line here, or none (see :func:`space_for`).
#: Ranges start around each paper's default; η-like shares are bounded by 1.
SPACES: dict[str, Space] = {
    "CoDPS+": Space({"scale": (0.05, 1.0)}, per_step=("t_div",)),
    "CoDPS": Space({"scale": (0.02, 0.5)}, per_step=("t_div",)),
    "DPS": Space({"scale": (0.1, 3.0)}),
    "PiGDM": Space({"scale": (0.1, 3.0)}),
    "TMPD": Space({"scale": (0.1, 3.0)}),
    "MMPS": Space({"scale": (0.1, 3.0)}),
    "DDRM": Space({"eta": (0.05, 1.0)}, bounds={"eta": (0.0, 1.0)}),
    "DDNM": Space({"eta": (0.05, 1.0)}, bounds={"eta": (0.0, 1.0)}),
    "DiffPIR": Space({"lam": (1.0, 50.0), "zeta": (0.05, 1.0)}, bounds={"zeta": (0.0, 1.0)}),
    "RED-diff": Space({"lr": (0.02, 0.5), "grad_term_weight": (0.05, 1.0)}),
    "DAPS": Space({"lr": (1e-5, 1e-3)}),
    "OPC": Space({"mle_sigma_thres": (0.05, 10.0)}),
}


def space_for(name: str, base_params: Mapping[str, Any]) -> Space:
    """The search space of method ``name``: its :data:`SPACES` line (when the parameters it names
    exist; else a warning and the default), else ``scale`` (or the first
    numeric parameter of its ``Param`` specs) over [v / 10, 10 v] around its configured value v
    (its default when v is 0 or not a number; [1e-3, 1] when that is 0 too). A method with no
    numeric parameter gets an empty space (evaluated once, as configured)."""
    cls = solver_class(name)
    specs = getattr(cls, "params", {}) or {}
    for key in cls.names:
        if key in SPACES:
            unknown = sorted(set(SPACES[key].ranges) - set(specs))
            if not unknown:
                return SPACES[key]
            log.warning("SPACES[%r] names parameter(s) %s that %s does not have (valid: %s); using the default "
                        "space", key, ", ".join(unknown), name, ", ".join(specs))
    numeric = [p for p, s in specs.items() if getattr(s, "kind", "") in ("positive", "nonneg", "nonneg_or_auto")]
    if not numeric:
        return Space({})
    param = "scale" if "scale" in numeric else numeric[0]
    v = base_params.get(param, specs[param].default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        v = specs[param].default if isinstance(specs[param].default, (int, float)) else 0
    lo, hi = (v / 10, v * 10) if v and v > 0 else (1e-3, 1.0)
    return Space({param: (float(lo), float(hi))})


def fmt(v: float) -> float:
    """``v`` rounded to 4 significant digits (the precision written to CSVs and configs)."""
    return float(f"{v:.4g}")


@dataclass
class Evaluation:
    """One evaluated point: the tuned values, the phase that proposed it, and its scores."""
    values: dict
    phase: str
    psnr: float
    psnr_se: float
    ssim: float
    ssim_se: float
    seconds: float
    nfe: int
    cached: bool

    def score(self, metric: str) -> float:
        """The criterion (nan -> -inf, so a failed point never wins)."""
        v = getattr(self, metric)
        return v if math.isfinite(v) else -math.inf


def grid_search(f: Callable[[dict, str], Evaluation], param: str, lo: float, hi: float, metric: str = "psnr",
                n_init: int = 6, max_evals: int = 12, max_extend: int = 8,
                bound: tuple[float, float] = (0.0, math.inf)) -> list[Evaluation]:
    """One-parameter search: a log-spaced grid of ``n_init`` points on [lo, hi]; while the best
    point is the smallest or largest evaluated (and within ``bound``, at most ``max_extend``
    times), one more point a grid ratio r = (hi/lo)^(1/(n_init-1)) beyond it; then log-midpoints
    between the best and its neighbours (better neighbour's side first) up to ``max_evals``
    evaluations in all. ``f(values, phase)`` evaluates one point.

    Returns:
        every evaluation, in order. The best is inside the evaluated range unless the extension
        hit ``bound`` or ``max_extend`` (then :func:`on_edge` says so).

    Raises:
        ValueError: lo <= 0, hi <= lo, n_init < 3.
    """
    if not (0 < lo < hi) or n_init < 3:
        raise ValueError(f"grid_search: need 0 < lo < hi and n_init >= 3, got lo={lo}, hi={hi}, n_init={n_init}")
    ratio = (hi / lo) ** (1.0 / (n_init - 1))
    evals: list[Evaluation] = []
    seen: set[float] = set()

    def run(v: float, phase: str) -> None:
        v = fmt(v)
        if v not in seen:
            seen.add(v)
            evals.append(f({param: v}, phase))

    for v in np.geomspace(lo, hi, n_init):
        run(float(v), "grid")
    for _ in range(max_extend):
        best = max(evals, key=lambda e: e.score(metric)).values[param]
        vals = sorted(seen)
        if best == vals[-1] and best * ratio < bound[1]:
            run(best * ratio, "extend")
        elif best == vals[0] and best / ratio > bound[0]:
            run(best / ratio, "extend")
        else:
            break
    while len(evals) < max_evals:
        by_value = sorted(evals, key=lambda e: e.values[param])
        k = max(range(len(by_value)), key=lambda i: by_value[i].score(metric))
        best = by_value[k].values[param]
        sides = [by_value[i] for i in (k - 1, k + 1) if 0 <= i < len(by_value)]
        sides.sort(key=lambda e: e.score(metric), reverse=True)
        before = len(evals)
        for nb in sides:
            if len(evals) < max_evals:
                run(math.sqrt(best * nb.values[param]), "refine")
        if len(evals) == before:   # the midpoints round to points already evaluated
            break
    return evals


def tpe_search(f: Callable[[dict, str], Evaluation], ranges: Mapping[str, tuple[float, float]],
               metric: str = "psnr", max_evals: int = 12, seed: int = 0, extra_per_extension: int = 3,
               max_extend: int = 4, bounds: Mapping[str, tuple[float, float]] | None = None,
               start: Mapping[str, float] | None = None) -> tuple[list[Evaluation], dict]:
    """Two-parameter search with optuna's TPE sampler (Bergstra et al. 2011), seeded, over log
    ranges: ``max_evals`` trials (the first at ``start`` when it lies in the ranges), then, while
    the best value of a parameter lies in the outer fifth (in log) of its range, that side is
    extended by a factor √(hi/lo) (within ``bounds``) and ``extra_per_extension`` more trials
    run, at most ``max_extend`` times. Every extension starts a fresh study warm-started with all
    evaluations so far (optuna needs fixed distributions per study).

    Returns:
        (every evaluation in order, the final ranges {param: (lo, hi)}).
    """
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}
    bounds = dict(bounds or {})
    evals: list[Evaluation] = []

    def study_for(n_seed: int):
        dists = {k: optuna.distributions.FloatDistribution(lo, hi, log=True) for k, (lo, hi) in ranges.items()}
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=n_seed, n_startup_trials=5))
        for e in evals:
            if all(ranges[k][0] <= e.values[k] <= ranges[k][1] for k in ranges):
                study.add_trial(optuna.trial.create_trial(params=dict(e.values), distributions=dists,
                                                          value=max(e.score(metric), -1e9)))
        return study, dists

    def trials(n: int, phase: str, n_seed: int, first: Mapping[str, float] | None = None) -> None:
        study, dists = study_for(n_seed)
        if first is not None:
            study.enqueue_trial(dict(first))
        for _ in range(n):
            trial = study.ask(dists)
            values = {k: fmt(v) for k, v in trial.params.items()}
            e = f(values, phase)
            evals.append(e)
            study.tell(trial, max(e.score(metric), -1e9))

    first = {k: fmt(v) for k, v in (start or {}).items() if k in ranges and isinstance(v, (int, float))
             and not isinstance(v, bool) and v > 0} if start else None
    if first is not None and not (set(first) == set(ranges) and all(
            ranges[k][0] <= first[k] <= ranges[k][1] for k in ranges)):
        first = None
    trials(max_evals, "tpe", seed, first)
    for ext in range(max_extend):
        best = max(evals, key=lambda e: e.score(metric)).values
        moved = False
        for k, (lo, hi) in list(ranges.items()):
            span, factor = math.log(hi / lo), math.sqrt(hi / lo)
            b = bounds.get(k, (0.0, math.inf))
            pos = math.log(best[k] / lo) / span
            if pos >= 0.8 and hi < b[1]:
                ranges[k] = (lo, min(hi * factor, b[1]))
                moved = True
            elif pos <= 0.2 and lo > b[0]:
                ranges[k] = (max(lo / factor, b[0] if b[0] > 0 else lo / factor), hi)
                moved = True
        if not moved:
            break
        trials(extra_per_extension, "extend", seed + 1 + ext)
    return evals, ranges


def edge_probe(f: Callable[[dict, str], Evaluation], evals: list[Evaluation], ranges: Mapping[str, tuple[float, float]],
               bounds: Mapping[str, tuple[float, float]] | None = None, metric: str = "psnr",
               max_probes: int = 4) -> tuple[list[Evaluation], dict]:
    """Close the edges a two-parameter search left: while the best value of a parameter is the
    largest (smallest) evaluated, evaluate the best point with that parameter moved outwards (the
    log-midpoint between it and its range end; past the range end, one fifth of the range's log
    span further), clipped to the parameter's hard bound, the other parameter held at its best;
    at most ``max_probes`` evaluations. TPE can leave the top of a range unsampled (DiffPIR
    ζ ∈ [0.05, 1]: best 0.953 with nothing above it); this line search settles whether the
    optimum lies inside the searched range or at the bound (then :func:`at_limit` says so).

    Returns:
        (the new evaluations in order, the ranges widened to what was evaluated).
    """
    bounds = dict(bounds or {})
    ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}
    new: list[Evaluation] = []
    seen = {tuple(sorted(e.values.items())) for e in evals}
    stuck: set[str] = set()
    while len(new) < max_probes:
        every = evals + new
        best = max(every, key=lambda e: e.score(metric)).values
        edge = [p for p in on_edge(every, list(ranges), metric) if p not in stuck]
        if not edge:
            break
        p = edge[0]
        lo, hi = ranges[p]
        b_lo, b_hi = bounds.get(p, (0.0, math.inf))
        v, step = float(best[p]), (hi / lo) ** 0.2
        if v == max(e.values[p] for e in every):
            target = math.sqrt(v * hi) if v < hi / 1.01 else v * step
            target = min(target, b_hi)
        else:
            target = math.sqrt(v * lo) if v > lo * 1.01 else v / step
            target = max(target, b_lo) if b_lo > 0 else target
        values = {**best, p: fmt(target)}
        key = tuple(sorted(values.items()))
        if key in seen:   # at the hard bound (or rounding): this side cannot move
            stuck.add(p)
            continue
        seen.add(key)
        new.append(f(values, "edge"))
        ranges[p] = (min(lo, values[p]), max(hi, values[p]))
    return new, ranges


def on_edge(evals: list[Evaluation], params: list[str], metric: str) -> list[str]:
    """Parameters whose best value (by ``metric``) is the smallest or largest evaluated."""
    if not evals or not params:
        return []
    best = max(evals, key=lambda e: e.score(metric)).values
    out = []
    for p in params:
        vals = [e.values[p] for e in evals]
        if len(set(vals)) > 1 and best[p] in (min(vals), max(vals)):
            out.append(p)
    return out


@dataclass
class Choice:
    """The outcome of one tuning run (written as ``<run>.json``)."""
    method: str
    task: str
    budget: int
    respacing: str
    metric: str
    params: dict          # everything written to the config (tuned + step-rescaled values)
    tuned: list           # names of the searched parameters
    psnr: float
    ssim: float
    other_best: dict      # best values by the other metric, and their scores
    ranges: dict          # searched range per parameter (min, max evaluated)
    edge: list            # parameters whose choice is on an edge of the searched range
    n_evals: int
    seconds: float        # seconds per image at the chosen point
    nfe: int
    num: int
    seed: int
    prior: str
    command: str


def fixed_params(spec: MethodSpec, task: str, respacing: str, space: Space) -> dict:
    """The parameters held fixed while tuning at ``respacing``: the config's ``params`` with the
    step-counted ones (``space.per_step``) rescaled from the config's default respacing."""
    params = dict(conditioning(spec, task).get("params") or {})
    ref = steps_of(diffusion_config(spec)["timestep_respacing"])
    for p in space.per_step:
        if isinstance(params.get(p), (int, float)) and not isinstance(params.get(p), bool):
            params[p] = fmt(params[p] * steps_of(respacing) / ref)
    return params


def tune_one(spec: MethodSpec, task: str, budget: int, metric: str = "psnr", num: int = 8, seed: int = 22,
             max_evals: int = 12, n_init: int = 6, cache: Cache | None = None, batch_size: int = 8,
             command: str = "") -> tuple[Choice, list[Evaluation]]:
    """Tune method ``spec`` on ``task`` at ``budget`` NFE (see the module docstring).

    Returns:
        (the choice, every evaluation).

    Raises:
        ValueError: unknown metric, a task the method has no config for, a bad budget.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if task not in spec.configs:
        raise ValueError(f"{spec.name} has no MNIST config for {task}")
    base = conditioning(spec, task).get("params") or {}
    space = space_for(spec.name, base)
    respacing = respacing_for(spec, budget, base, task)
    fixed = fixed_params(spec, task, respacing, space)
    digest = prior_digest()
    meas = measurement_config(task)

    def f(values: dict, phase: str) -> Evaluation:
        params = {**fixed, **values}
        key = cache_key(kind="tune", method=spec.name, task=task, respacing=respacing,
                        params=key_params(spec.name, params), split="tune",
                        num=num, seed=seed, measurement=meas, diffusion=diffusion_config(spec), prior=digest)
        rec = cache.get(key) if cache is not None else None
        cached = rec is not None
        if rec is None:
            try:
                s = run_method(spec, task, params, respacing, "tune", num, seed, batch_size)
                rec = dict(psnr=s.psnr, ssim=s.ssim, seconds=s.seconds, nfe=s.nfe, error=None)
                if s.nfe != budget:
                    log.warning("%s %s: the loop counted %d network calls per image for a budget of %d "
                                "(nfe_per_step?)", spec.name, task, s.nfe, budget)
            except ValueError as exc:   # e.g. a value out of the method's valid range
                rec = dict(psnr=[], ssim=[], seconds=float("nan"), nfe=0, error=" ".join(str(exc).split()))
            if cache is not None:
                rec = cache.put(key, dict(rec, method=spec.name, task=task, respacing=respacing, params=params))
        pm, pse = mean_se(rec["psnr"])
        sm, sse = mean_se(rec["ssim"])
        e = Evaluation(dict(values), phase, pm, pse, sm, sse, float(rec["seconds"]), int(rec["nfe"]), cached)
        log.info("%s %s %s %s: %s -> PSNR %.2f SSIM %.3f%s", spec.name, task, respacing, phase,
                 ", ".join(f"{k}={v:g}" for k, v in values.items()), pm, sm, " (cached)" if cached else "")
        return e

    names = list(space.ranges)
    final_ranges = dict(space.ranges)
    if not names:
        evals = [f({}, "as configured")]
    elif len(names) == 1:
        p = names[0]
        evals = grid_search(f, p, *space.ranges[p], metric=metric, n_init=n_init, max_evals=max_evals,
                            bound=space.bounds.get(p, (0.0, math.inf)))
    elif len(names) == 2:
        evals, final_ranges = tpe_search(f, space.ranges, metric=metric, max_evals=max_evals, seed=seed,
                                         bounds=space.bounds, start={k: fixed[k] for k in names if k in fixed})
        probes, final_ranges = edge_probe(f, evals, final_ranges, space.bounds, metric)
        evals += probes
    else:
        raise ValueError(f"{spec.name}: tune one or two parameters, the space has {names}")
    other = "ssim" if metric == "psnr" else "psnr"
    best = max(evals, key=lambda e: e.score(metric))
    alt = max(evals, key=lambda e: e.score(other))
    searched = {p: [min(e.values[p] for e in evals), max(e.values[p] for e in evals)] for p in names}
    chosen = {**{p: fixed[p] for p in space.per_step if p in fixed}, **best.values}
    choice = Choice(spec.name, task, budget, respacing, metric, chosen, names, best.psnr, best.ssim,
                    dict(values=alt.values, psnr=alt.psnr, ssim=alt.ssim, metric=other), searched,
                    on_edge(evals, names, metric), len(evals), best.seconds, best.nfe, num, seed, digest, command)
    if choice.edge:
        log.warning("%s %s %s: the best %s lies on the edge of the searched range %s (bound or extension limit)",
                    spec.name, task, respacing, ", ".join(choice.edge), searched)
    return choice, evals


def run_name(choice_or_spec: Any, task: str, budget: int, metric: str) -> str:
    """``<method slug>_<task>_<budget>[_ssim]``."""
    from benchmarks.evaluate import slug
    name = choice_or_spec.name if hasattr(choice_or_spec, "name") else choice_or_spec
    return f"{slug(name)}_{task}_{budget}" + ("" if metric == "psnr" else f"_{metric}")


def write_run(out: str, choice: Choice, evals: list[Evaluation]) -> str:
    """Write ``<out>/<run>.csv`` (every evaluation; ``chosen`` marks the choice) and ``.json``
    (the choice), atomically; returns the path stem."""
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, run_name(choice.method, choice.task, choice.budget, choice.metric))
    best = max(evals, key=lambda e: e.score(choice.metric))
    rows = []
    for i, e in enumerate(evals):
        rows.append(dict(eval=i + 1, phase=e.phase, method=choice.method, task=choice.task, budget=choice.budget,
                         respacing=choice.respacing, **{p: f"{e.values[p]:g}" for p in choice.tuned},
                         psnr=f"{e.psnr:.3f}", psnr_se=f"{e.psnr_se:.3f}", ssim=f"{e.ssim:.4f}",
                         ssim_se=f"{e.ssim_se:.4f}", seconds=f"{e.seconds:.3f}", nfe=e.nfe,
                         chosen=int(e is best)))
    write_csv(stem + ".csv", list(rows[0]), rows)
    atomic_write_bytes(stem + ".json", (json.dumps(choice.__dict__, indent=1, default=float) + "\n").encode())
    return stem


def at_limit(method: str, param: str, value: float) -> bool:
    """True when ``value`` sits at (within 1 % of) a finite hard bound of ``param`` in the method's
    :data:`SPACES` line, e.g. η = 1 for DDRM: the edge extension cannot go further, and the choice is
    the end of the parameter's valid range, not of an under-searched grid."""
    cls_names = solver_class(method).names if method else ()
    for key in cls_names:
        if key in SPACES:
            lo, hi = SPACES[key].bounds.get(param, (0.0, math.inf))
            return (math.isfinite(hi) and value >= 0.99 * hi) or (lo > 0 and value <= 1.01 * lo)
    return False


def inside_label(c: Mapping[str, Any]) -> str:
    """The ``inside`` column of chosen.md: "yes"; "at limit: p" when every edge parameter sits at its
    hard bound (:func:`at_limit`); else "no: p" (an edge the search could have extended)."""
    edge = list(c.get("edge") or [])
    if not edge:
        return "yes"
    limited = [p for p in edge if at_limit(c["method"], p, float(c["params"][p]))]
    if len(limited) == len(edge):
        return "at limit: " + ",".join(limited)
    return "no: " + ",".join(p for p in edge if p not in limited)


def write_summary(out: str) -> str:
    """Rebuild ``<out>/chosen.csv`` and ``chosen.md`` from every ``<run>.json`` in ``out``."""
    choices = []
    for name in sorted(os.listdir(out)):
        if name.endswith(".json"):
            with open(os.path.join(out, name), encoding="utf-8") as f:
                choices.append(json.load(f))
    order = {t: i for i, t in enumerate(TASKS)}
    choices.sort(key=lambda c: (c["method"], order.get(c["task"], 99), c["budget"], c["metric"]))
    rows = [dict(method=c["method"], task=c["task"], budget=c["budget"], respacing=c["respacing"], metric=c["metric"],
                 params=" ".join(f"{k}={v:g}" for k, v in c["params"].items()), psnr=f"{c['psnr']:.2f}",
                 ssim=f"{c['ssim']:.3f}",
                 best_by_other=" ".join(f"{k}={v:g}" for k, v in c["other_best"]["values"].items()),
                 other_psnr=f"{c['other_best']['psnr']:.2f}", other_ssim=f"{c['other_best']['ssim']:.3f}",
                 searched=" ".join(f"{k}∈[{a:g}, {b:g}]" for k, (a, b) in c["ranges"].items()),
                 inside=inside_label(c), evals=c["n_evals"],
                 seconds=f"{c['seconds']:.3f}", nfe=c["nfe"]) for c in choices]
    if not rows:
        return out
    write_csv(os.path.join(out, "chosen.csv"), list(rows[0]), rows)
    cols = list(rows[0])
    lines = ["Tuned values on the MNIST tune digits (benchmarks/tune.py); psnr / ssim = mean over the tune digits "
             "at the chosen point; best_by_other = the point the other metric would choose; inside = the choice is "
             "strictly inside the searched (evaluated) range (\"at limit\": at the parameter's hard bound, e.g. "
             "eta = 1, where the range cannot be extended).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    atomic_write_bytes(os.path.join(out, "chosen.md"), ("\n".join(lines) + "\n").encode())
    return out


def apply_choice(table_path: str, task: str, respacing: str, values: Mapping[str, Any],
                 default_respacing: str) -> str:
    """Write tuned ``values`` into the method table at ``table_path``
    (``configs/MNIST/methods/<method>.yaml``): the task entry's ``tuned.<respacing>`` (created or
    replaced; entries sorted by step count), and, when ``respacing`` is the diffusion config's
    ``default_respacing`` (on the method's time grid), the same keys of the entry's ``params``.
    The table is re-rendered (``tools.compose_configs.render_methods_file``), re-read and checked
    before it replaces the file atomically.

    Raises:
        ValueError: the table has no entry for ``task``, or the rewritten file does not read back
            as intended.
    """
    from tools.compose_configs import render_methods_file
    table = load_yaml(table_path, "method table")
    entry = (table.get("tasks") or {}).get(task)
    if not isinstance(entry, dict):
        raise ValueError(f"{table_path}: no entry for task {task} to write tuned values into")
    written = {k: fmt(v) if isinstance(v, float) else v for k, v in values.items()}
    tuned = {str(k): dict(v) for k, v in (entry.get("tuned") or {}).items()}
    tuned[str(respacing)] = dict(written)
    entry["tuned"] = tuned
    if str(respacing) == str(default_respacing):
        shared = table.get("defaults") or {}
        entry["params"] = {**(entry.get("params") or {}),
                           **{k: v for k, v in written.items()
                              if k in (entry.get("params") or {}) or k not in shared or shared[k] != v}}
    new = render_methods_file(table)
    check = yaml.load(new, Loader=ConfigLoader)
    got = {str(k): v for k, v in check["tasks"][task]["tuned"].items()}[str(respacing)]
    if written != got:
        raise ValueError(f"{table_path}: rewriting the tuned values did not read back ({got} != {dict(values)})")
    atomic_write_bytes(table_path, new.encode())
    return table_path


def sweep(spec: MethodSpec, task: str, budget: int, sigma_maxes: list[float], params: list[str], split: str,
          num: int, seed: int, cache: Cache | None, batch_size: int = 8, uniform: bool = True) -> list[dict]:
    """The sweep mode (``--sweep``, which replaced benchmarks/time_grid.py and the grids of
    benchmarks/mnist_sweep.py): method ``spec`` on ``task`` at ``budget`` NFE with its table's
    values for the uniform grid, crossed with every combination of ``params`` (``name=v1,v2``;
    ``auto`` kept as a string) and with the time grids: the uniform ``ddim<N>`` / ``"<N>"`` (unless
    ``uniform`` is False) and ``sigma<N>max<S>`` for each S of ``sigma_maxes`` (none given: the
    method's own grid). Every run is cached like the tuner's evaluations (same key on the tune
    split). Returns one record per run (method, task, respacing, params, split, num, seed, mean
    PSNR / SE / SSIM, NFE, per-digit PSNR and SSIM).

    Raises:
        ValueError: a malformed ``name=v1,v2`` or a bad budget."""
    steps_uniform = respacing_for(spec, budget, conditioning(spec, task).get("params") or {})
    base = method_params(spec, task, steps_uniform)
    combos: list[dict] = [{}]
    for item in params:
        if "=" not in item:
            raise ValueError(f"--param {item!r} is not name=v1,v2")
        name, values = item.split("=", 1)
        combos = [{**c, name: (v if v == "auto" else float(v))} for c in combos for v in values.split(",")]
    steps = steps_of(steps_uniform)
    grids = ([steps_uniform] if uniform else []) + [f"sigma{steps}max{smax:g}" for smax in sigma_maxes]
    if not sigma_maxes:
        grids = [respacing_for(spec, budget, base, task)]
    digest, meas, out = prior_digest(), measurement_config(task), []
    for combo in combos:
        for respacing in grids:
            run = {**base, **combo}
            key = cache_key(kind="tune", method=spec.name, task=task, respacing=respacing,
                            params=key_params(spec.name, run), split=split,
                            num=num, seed=seed, measurement=meas, diffusion=diffusion_config(spec), prior=digest)
            rec = cache.get(key) if cache is not None else None
            if rec is None:
                s = run_method(spec, task, run, respacing, split, num, seed, batch_size)
                rec = dict(psnr=s.psnr, ssim=s.ssim, seconds=s.seconds, nfe=s.nfe, error=None)
                if cache is not None:
                    rec = cache.put(key, dict(rec, method=spec.name, task=task, respacing=respacing, params=run))
            m, se = mean_se(rec["psnr"])
            out.append(dict(method=spec.name, task=task, respacing=respacing, params=run, split=split, num=num,
                            seed=seed, psnr=round(m, 3), se=round(se, 3), ssim=round(mean_se(rec["ssim"])[0], 4),
                            nfe=rec["nfe"], psnrs=[round(v, 3) for v in rec["psnr"]],
                            ssims=[round(v, 4) for v in rec["ssim"]]))
    return out


def apply_results(out: str, specs: Mapping[str, MethodSpec], methods: list[str], tasks: list[str],
                  budgets: list[int] | None, metric: str = "psnr") -> list[str]:
    """Write every choice of ``out`` (``<run>.json`` by :func:`write_run`) of ``metric`` for the
    selected methods, tasks and budgets (None: all) into the method tables (:func:`apply_choice`),
    in file-name order; choices made for another prior (checkpoint digest) are skipped with a
    warning. Returns the tables written, one entry per choice."""
    digest, written = prior_digest(), []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        if not name.endswith(".json"):
            continue
        with open(os.path.join(out, name), encoding="utf-8") as f:
            c = json.load(f)
        if c.get("metric") != metric or c.get("method") not in methods or c.get("task") not in tasks or \
                (budgets is not None and c.get("budget") not in budgets):
            continue
        spec = specs[c["method"]]
        if c.get("prior") != digest:
            log.warning("%s was tuned for another prior (%s, now %s); not applied", name, c.get("prior"), digest)
            continue
        if c["task"] not in spec.configs:
            continue
        default = str(grid_respacing(diffusion_config(spec)["timestep_respacing"], time_grid(spec, c["task"])))
        written.append(apply_choice(spec.table, c["task"], c["respacing"], c["params"], default))
    return written


def main(argv=None) -> int:
    """Run the tuner; returns 0 (2 for bad arguments)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__.split("\n\n")[0].rstrip(":") + ".",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", required=True, help="registered name, a comma list, or all (with MNIST configs)")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}, a comma list, or all")
    p.add_argument("--budget", required=True, help="NFE per image (20, 50, 100, 250), a comma list, or all")
    p.add_argument("--metric", choices=METRICS, default="psnr", help="criterion (both are reported)")
    p.add_argument("--num", type=int, default=8, help="first N tune digits")
    p.add_argument("--max_evals", type=int, default=12, help="evaluations per run (more only for edge extension)")
    p.add_argument("--init", type=int, default=6, help="initial grid points (one-parameter search)")
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    p.add_argument("--apply", action="store_true", help="write the choices into configs/MNIST/methods/<method>.yaml")
    p.add_argument("--sweep", action="store_true",
                   help="evaluate a fixed grid instead of searching: the table's values crossed with --param and "
                        "the time grids --sigma_max (one JSON line per run; cached)")
    p.add_argument("--param", action="append", default=[], help="with --sweep: name=v1,v2 (repeatable)")
    p.add_argument("--sigma_max", type=float, nargs="*", default=[],
                   help="with --sweep: time grids sigma<N>max<S> to compare with the uniform one")
    p.add_argument("--no_uniform", action="store_true", help="with --sweep --sigma_max: skip the uniform grid")
    p.add_argument("--split", default="tune", choices=("tune", "test"), help="with --sweep: the digits")
    p.add_argument("--from_results", action="store_true",
                   help="with --apply: write the choices already in --out (<run>.json of --metric, for the current "
                        "prior) into the method tables, running nothing")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "tune"),
                   help="results folder (the default holds the committed results: use another for trials)")
    a = p.parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("util.config").setLevel(logging.WARNING)   # each evaluation logs its values itself
    try:
        specs, methods, tasks = select(a.method, a.task)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        budgets = None if a.budget == "all" else [int(b) for b in a.budget.split(",")]
    except ValueError:
        print(f"error: --budget must be integers or all, got {a.budget!r}", file=sys.stderr)
        return 2
    if a.num < 1 or a.max_evals < 1 or a.init < 3:
        print("error: --num and --max_evals must be >= 1 and --init >= 3", file=sys.stderr)
        return 2
    if a.from_results:
        if not a.apply:
            print("error: --from_results needs --apply", file=sys.stderr)
            return 2
        for path in apply_results(a.out, specs, methods, tasks, budgets, a.metric):
            print(f"applied to {os.path.relpath(path, ROOT)}", flush=True)
        return 0
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    cache = Cache(os.path.join(a.out, "cache.jsonl"))
    command = "python -m benchmarks.tune " + " ".join(argv_list)
    if a.sweep:
        sweep_cache = cache if a.split == "tune" else Cache(os.path.join(a.out, "sweep_test_cache.jsonl"))
        for name in methods:
            for task in (t for t in tasks if t in specs[name].configs):
                for budget in (budgets or [100]):
                    try:
                        recs = sweep(specs[name], task, budget, a.sigma_max, a.param, a.split, a.num, a.seed,
                                     sweep_cache, a.batch_size, not a.no_uniform)
                    except ValueError as exc:
                        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
                        return 2
                    for rec in recs:
                        print(json.dumps(rec), flush=True)
        return 0
    for name in methods:
        spec = specs[name]
        for task in tasks:
            if task not in spec.configs:
                log.warning("%s has no MNIST config for %s; skipped", name, task)
                continue
            for budget in (budgets or budgets_of(spec)):
                try:
                    choice, evals = tune_one(spec, task, budget, a.metric, a.num, a.seed, a.max_evals, a.init,
                                             cache, a.batch_size, command)
                except ValueError as exc:
                    print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
                    return 2
                write_run(a.out, choice, evals)
                write_summary(a.out)
                print(f"{name} {task} {budget} NFE ({choice.respacing}): "
                      + ", ".join(f"{k}={v:g}" for k, v in choice.params.items())
                      + f"  PSNR {choice.psnr:.2f} SSIM {choice.ssim:.3f}  ({choice.n_evals} evaluations"
                      + (f"; ON EDGE: {', '.join(choice.edge)}" if choice.edge else "") + ")", flush=True)
                if a.apply:
                    path = apply_choice(spec.table, task, choice.respacing, choice.params,
                                        str(grid_respacing(diffusion_config(spec)["timestep_respacing"],
                                                           time_grid(spec, task))))
                    print(f"  applied to {os.path.relpath(path, ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
