"""Posterior accuracy against the exact posterior: every solver on the 25-component Gaussian
mixture of the diffusion posterior-sampling literature (MCGdiff, Cardoso et al. 2024; TMPD,
Boys et al. 2024), whose diffused scores and posterior are closed-form (:mod:`guided_diffusion.gmm`).

    python -m benchmarks.gmm            # the full grid -> benchmarks/results/gmm.{csv,md}
    python -m benchmarks.gmm --quick    # a CI-sized run  -> benchmarks/results/gmm_quick.{csv,md}

Problem (d, m, σ_y): prior = :func:`grid_mixture` (d) (unit covariances, means (8i, 8j, 8i, …),
U(0, 1) weights normalised, seed fixed); A: m × d with N(0, 1) entries and unit-norm rows
(:func:`operators.dense.random_matrix`); y = A x* + σ_y n with x* drawn from the prior.
Every method starts from the same x_T and sampler noise (common random numbers); the network is
the exact ε of the diffused mixture (:class:`GMMEpsilon`), linear schedule, 1000 original steps,
``clip_denoised: false``, ``model_var_type: fixedsmall``, DDIM η = 1.

Metrics on the non-diverged samples: sliced Wasserstein-2 distance to as many exact posterior
draws (``--projections`` random directions, the same for every method), the Euclidean error of
the sample mean against the closed-form E[x_0 | y], and the total-variation distance between
the fraction of samples assigned to each component (its most likely component under the exact
posterior) and the exact posterior weights. The row ``exact`` is the Monte-Carlo floor of each
metric: ``floor_draws`` further sets of exact posterior draws (of the same size) scored like a
method; it reports their median and 5–95 % range (one draw alone can sit beyond the 95th
percentile). The tables show every m (a median over m hides the m = 1 failures).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from guided_diffusion.gaussian_diffusion import GaussianDiffusion, create_sampler
from guided_diffusion.gmm import GMMEpsilon, GMMPosterior, GaussianMixture, as_vectors, grid_mixture
from operators import Physics, get_noise, get_operator
from operators.dense import random_matrix
from restore import restore
from solvers import Solver, get_solver
from solvers.base import compute_dtype, per_sample

log = logging.getLogger(__name__)

#: Samplers of the benchmark: label -> diffusion-config keys.
SAMPLERS = {
    "DDPM 1000": dict(sampler="ddpm", timestep_respacing="1000"),
    "DDIM 100": dict(sampler="ddim", timestep_respacing="ddim100", eta=1.0),
}
DIFFUSION = dict(steps=1000, noise_schedule="linear", model_var_type="fixedsmall", clip_denoised=False)


@dataclass(frozen=True)
class Method:
    """One row of the benchmark: a registered solver with its parameters, run with ``samplers``."""
    label: str
    solver: str
    params: dict
    samplers: tuple[str, ...] = tuple(SAMPLERS)
    note: str = ""


#: The methods. "paper" = the FFHQ configs' values (configs/FFHQ/DDPM for CoDPS, /DDIM for
#: CoDPS+), each on the sampler the paper pairs it with; "auto" = scale auto with inv_var = 1,
#: the precision of every mixture component; DPS with its FFHQ config's ζ = 0.3 (not tuned);
#: ΠGDM with guidance weight 1 (the exact likelihood-score weight); DDRM, DDNM+ and DiffPIR with
#: their papers' defaults (η = 0.85, η_b = 1; η = 0.85; λ = 7, ζ = 0.3), on DDIM 100 only (they
#: replace the sampler's update with their own, so the sampler only sets the time grid); RED-diff
#: with its reference code's lr and λ, and with lr 1 (the mixture spans ±16, the reference lr is
#: for [-1, 1] images); DAPS with τ = σ_y (the true noise), 100 Langevin steps of half the
#: stability limit per level, or the exact Gaussian draw; TMPD with the exact (m VJPs) and the
#: row-sum covariance (as the reference: no guard; and with the ``abs_var`` guard); MMPS with one
#: GMRES iteration (azula's default) and with k = 4 >= m (an exact solve of the full covariance).
#: The oracle stays last.
METHODS = (
    Method("prior (no data)", "none", {}),
    Method("CoDPS (paper)", "CoDPS", dict(scale=0.01, t_div=200, div_ratio=10, inv_var=0.1), ("DDPM 1000",)),
    Method("CoDPS+ (paper)", "CoDPS+", dict(scale=0.05, t_div=15, div_ratio=10, inv_var=1.0), ("DDIM 100",)),
    Method("CoDPS (auto)", "CoDPS", dict(scale="auto", inv_var=1.0)),
    Method("CoDPS+ (auto)", "CoDPS+", dict(scale="auto", inv_var=1.0)),
    Method("DPS", "DPS", dict(scale=0.3)),
    Method("ΠGDM", "PiGDM", dict(scale=1.0)),
    Method("DDRM", "DDRM", dict(eta=0.85, eta_b=1.0), ("DDIM 100",)),
    Method("DDNM+", "DDNM", dict(eta=0.85), ("DDIM 100",)),
    Method("DiffPIR", "DiffPIR", dict(lam=7.0, zeta=0.3), ("DDIM 100",)),
    Method("RED-diff", "RED-diff", dict(lr=0.1, grad_term_weight=0.25)),
    Method("RED-diff (lr 1)", "RED-diff", dict(lr=1.0, grad_term_weight=0.25),
           note="lr scaled to the mixture's range (±16, not [-1, 1])"),
    Method("DAPS (Langevin)", "DAPS", dict(langevin=True, langevin_steps=100, lr="auto", tau="auto")),
    Method("DAPS (exact)", "DAPS", dict(langevin=False, tau="auto")),
    Method("DAPS (exact, λ=1)", "DAPS", dict(langevin=False, tau="auto", inv_var=1.0),
           note="r_t² = 1/(1/σ_t² + 1): the components' precision, not the paper's r_t = σ_t"),
    Method("TMPD (exact cov)", "TMPD", dict(exact_cov=True)),
    Method("TMPD (row-sum)", "TMPD", dict(exact_cov=False)),
    Method("TMPD (row-sum, abs)", "TMPD", dict(exact_cov=False, abs_var=True),
           note="variance guard σ² + |…| (not the reference's)"),
    Method("MMPS (k=1)", "MMPS", dict(iterations=1)),
    Method("MMPS (k=4)", "MMPS", dict(iterations=4), note="k >= m: the GMRES solve is exact"),
    Method("oracle (exact score)", "oracle", {}, note="the exact ∇ log p(y | x_t) with the auto weight"),
)
EXACT = "exact (floor)"
#: The label of the exact row in CSVs written before the floor became a median over draws (one
#: second draw; it equals draw 1 of the floor, see :func:`exact_floor`).
LEGACY_EXACT = "exact (2nd draw)"
#: Percentiles of the floor's range.
FLOOR_RANGE = (5, 95)
METRICS = ("sw", "mean_err", "weight_tv")

#: ``ddpm_sigmas``: the σ_y at which DDPM 1000 runs (it costs ten times DDIM 100; None = all).
#: ``floor_draws``: the exact draws the floor's median and 5–95 % range come from.
FULL = dict(dims=(8, 80, 800), ms=(1, 2, 4), sigmas=(0.01, 0.1, 1.0), samples=1000, projections=1000,
            ddpm_sigmas=(0.1,), floor_draws=50)
QUICK = dict(dims=(8, 80), ms=(2,), sigmas=(0.1,), samples=200, projections=200, ddpm_sigmas=None,
             floor_draws=20)
#: Columns of the CSV; the floor's (``floor_draws`` and the ``*_p05`` / ``*_p95`` range) are
#: empty on method rows and optional when reading (older CSVs lack them).
FLOOR_FIELDS = ("floor_draws",) + tuple(f"{k}_p{q:02d}" for k in METRICS for q in FLOOR_RANGE)
CSV_FIELDS = ("d", "m", "sigma_y", "sampler", "nfe", "method", "solver", "params", "samples", "diverged",
              "sw", "mean_err", "weight_tv", "seconds") + FLOOR_FIELDS


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers via numpy's SeedSequence (independent streams per part tuple)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------
# Problems and metrics
# --------------------------------------------------------------------------------------------

@dataclass
class Problem:
    """One inverse problem: prior, A (m, d), y (m,), σ_y, the exact posterior and the hidden x*."""
    dim: int
    m: int
    sigma: float
    prior: GaussianMixture
    A: np.ndarray
    y: torch.Tensor
    x_true: torch.Tensor
    posterior: GMMPosterior


def make_problem(dim: int, m: int, sigma: float, seed: int = 0) -> Problem:
    """The (d, m, σ_y) problem of the benchmark.

    The prior's weights depend on ``seed`` only (the same mixture weights in every d); A, x* and
    the standard-normal noise n depend on (seed, d, m), so the σ_y of one (d, m) share them."""
    prior = grid_mixture(dim, seed=seed)
    a = random_matrix(m, dim, derived_seed(seed, dim, m, 0), normalize_rows=True)
    g = torch.Generator().manual_seed(derived_seed(seed, dim, m, 1))
    x_true, _ = prior.sample(1, g)
    y = x_true[0] @ torch.from_numpy(a).T + sigma * torch.randn(m, generator=g, dtype=torch.float64)
    return Problem(dim, m, sigma, prior, a, y, x_true[0], prior.posterior(a, y, sigma))


def sliced_wasserstein(x: torch.Tensor, ref: torch.Tensor, directions: torch.Tensor) -> float:
    """Sliced Wasserstein-2 distance (Bonneel et al. 2015) between the empirical measures of
    x (n, d) and ref (n', d), with the given unit directions (P, d):
    SW_2 = (mean_θ W_2²(θᵀx, θᵀref))^{1/2}, each 1-D W_2 from the sorted projections (quantile
    functions compared at (i + ½)/k, k = max(n, n'), by linear interpolation when n ≠ n').
    Returns nan for an empty x."""
    if x.shape[0] == 0:
        return float("nan")
    px = torch.sort(x.double() @ directions.T, dim=0).values          # (n, P)
    pr = torch.sort(ref.double() @ directions.T, dim=0).values
    if px.shape[0] != pr.shape[0]:
        k = max(px.shape[0], pr.shape[0])
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        px, pr = _quantiles(px, levels), _quantiles(pr, levels)
    return float(((px - pr) ** 2).mean().sqrt())


def _quantiles(sorted_cols: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of the empirical quantile function of each column at ``levels``."""
    n = sorted_cols.shape[0]
    pos = (levels * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.double())[:, None]
    return sorted_cols[lo] * (1 - frac) + sorted_cols[hi] * frac


def random_directions(count: int, dim: int, seed: int) -> torch.Tensor:
    """``count`` uniform unit vectors in R^dim, (count, dim) float64."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(count, dim, generator=g, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def weight_tv(posterior: GMMPosterior, x: torch.Tensor) -> float:
    """½ Σ_k |n_k / n − w'_k|: n_k samples of x (n, d) whose most likely component under the
    exact posterior is k, w'_k the exact posterior weights. In [0, 1]; nan for an empty x."""
    if x.shape[0] == 0:
        return float("nan")
    counts = torch.bincount(posterior.assign(x.double()), minlength=posterior.prior.num_components)
    return float(0.5 * (counts.double() / x.shape[0] - posterior.weights).abs().sum())


def score(problem: Problem, x: torch.Tensor, reference: torch.Tensor, directions: torch.Tensor) -> dict:
    """The three metrics of samples x (n, d) (non-finite rows dropped): sw, mean_err, weight_tv,
    and the number dropped (diverged)."""
    finite = torch.isfinite(x).all(dim=1)
    xs = x[finite].double()
    mean_err = float((xs.mean(0) - problem.posterior.mean()).norm()) if xs.shape[0] else float("nan")
    return {"sw": sliced_wasserstein(xs, reference, directions), "mean_err": mean_err,
            "weight_tv": weight_tv(problem.posterior, xs), "diverged": int((~finite).sum())}


def reference_generator(seed: int, dim: int, m: int, sigma: float) -> torch.Generator:
    """The generator of a problem's exact draws: first the reference set, then the floor's."""
    return torch.Generator().manual_seed(derived_seed(seed, dim, m, int(round(sigma * 1e6)), 2))


def exact_floor(problem: Problem, reference: torch.Tensor, directions: torch.Tensor, samples: int, draws: int,
                generator: torch.Generator) -> dict:
    """The Monte-Carlo floor of the metrics: ``draws`` sets of ``samples`` exact posterior draws
    (continuing ``generator`` after the reference set, so draw 1 is the former "2nd draw"),
    each scored against ``reference`` like a method.

    Returns:
        the row fields: ``sw``, ``mean_err``, ``weight_tv`` = the median over the draws,
        ``<metric>_p05`` / ``<metric>_p95`` their 5th / 95th percentiles (linear
        interpolation), ``floor_draws`` = draws, ``diverged`` = 0, and ``per_draw``: the
        (draws, 3) array of (sw, mean_err, weight_tv).

    Raises:
        ValueError: draws < 1.
    """
    if draws < 1:
        raise ValueError(f"floor draws must be >= 1, got {draws}")
    per_draw = []
    for _ in range(draws):
        x, _ = problem.posterior.sample(samples, generator)
        sc = score(problem, x, reference, directions)
        per_draw.append([sc[k] for k in METRICS])
    arr = np.asarray(per_draw, dtype=np.float64)
    out: dict[str, Any] = {"floor_draws": draws, "diverged": 0, "per_draw": arr}
    for j, k in enumerate(METRICS):
        out[k] = float(np.median(arr[:, j]))
        for q in FLOOR_RANGE:
            out[f"{k}_p{q:02d}"] = float(np.percentile(arr[:, j], q))
    return out


def floor_row(problem: Problem, seed: int, samples: int, projections: int, draws: int) -> dict:
    """The ``exact`` row of one problem (see :func:`exact_floor`): its reference set and
    directions are those of :func:`run`, so the row is the one a full run writes."""
    directions = random_directions(projections, problem.dim, derived_seed(seed, problem.dim, 99))
    gref = reference_generator(seed, problem.dim, problem.m, problem.sigma)
    reference, _ = problem.posterior.sample(samples, gref)
    floor = exact_floor(problem, reference, directions, samples, draws, gref)
    floor.pop("per_draw")
    return dict(d=problem.dim, m=problem.m, sigma_y=problem.sigma, samples=samples, sampler="-", nfe=0,
                method=EXACT, solver="-", params="", seconds=0.0, **floor)


# --------------------------------------------------------------------------------------------
# Running the samplers
# --------------------------------------------------------------------------------------------

class ExactLikelihoodStep(Solver):
    """Oracle step: x_{t-1} = x' + w_t ∇_{x_t} log p(y | x_t) with the exact Gaussian-mixture
    likelihood (:meth:`GaussianMixture.measurement_log_likelihood`) and the sampler's weight w_t
    (``step.weight``, as ``scale: auto``). Its samples differ from the exact posterior only by
    the sampler's discretisation: the ceiling for every approximate likelihood. Not registered
    (it needs the prior); ``needs_grad`` only so that the sampler leaves autograd on."""

    needs_grad = True
    params: dict = {}
    names = ("oracle",)

    def __init__(self, prior: GaussianMixture, A: np.ndarray, y: torch.Tensor, sigma: float) -> None:
        super().__init__()
        self.prior, self.A, self.y, self.sigma = prior, A, y, float(sigma)

    def step(self, step: Any, y: Any, physics: Any) -> torch.Tensor:
        """x_{t-1} (N, d, 1, 1); ``y`` is ignored (the problem's y is used)."""
        x_prev = step.proposal
        dtype = compute_dtype(x_prev)
        w = step.weight.to(dtype)
        with torch.enable_grad():
            x = as_vectors(step.x_t.detach()).double().requires_grad_(True)
            ll = self.prior.measurement_log_likelihood(x, float(step.alpha_bar.reshape(-1)[0]), self.A, self.y,
                                                       self.sigma)
            (grad,) = torch.autograd.grad(ll.sum(), x)
        step.residual = torch.zeros(x_prev.shape[0], dtype=dtype)
        x_next = x_prev.detach().to(dtype) + per_sample(w, x_prev) * grad.reshape(x_prev.shape).to(dtype)
        return x_next.to(x_prev.dtype)


def sample_method(problem: Problem, diffusion: GaussianDiffusion, model: GMMEpsilon, method: Method,
                  n: int, seed: int) -> tuple[torch.Tensor, list]:
    """n posterior samples (n, d) of ``method`` on ``problem`` (diverged samples as nan) and the
    per-sample divergence steps. Sample i's x_T and noise come from generator (seed, i), the same
    for every method."""
    d = problem.dim
    physics = Physics(get_operator("dense", matrix=problem.A, input_shape=(d, 1, 1)),
                      get_noise("gaussian", sigma=problem.sigma))
    physics.draw(None, (n, d, 1, 1))
    if method.solver == "oracle":
        solver = ExactLikelihoodStep(problem.prior, problem.A, problem.y, problem.sigma)
    else:
        solver = get_solver(method.solver, **method.params)
    y = problem.y.float().reshape(1, -1, 1, 1).expand(n, -1, 1, 1).contiguous()
    result = restore(model, diffusion, physics, solver, list(range(n)), seed, y=y, image_shape=(d, 1, 1))
    x = as_vectors(result.x0).double()
    bad = torch.tensor([s is not None for s in result.diverged_at], dtype=torch.bool)
    x[bad] = float("nan")
    return x, result.diverged_at


def run(dims: Sequence[int], ms: Sequence[int], sigmas: Sequence[float], samples: int, projections: int,
        seed: int = 0, methods: Sequence[Method] = METHODS, samplers: Sequence[str] = tuple(SAMPLERS),
        ddpm_sigmas: Optional[Sequence[float]] = None, floor_draws: int = FULL["floor_draws"],
        report: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Run the grid; returns one dict per (problem, sampler, method) with the CSV fields, plus
    an ``exact`` row per problem (the floor over ``floor_draws`` exact draws, :func:`exact_floor`).
    The prior (``none``) is sampled once per (d, sampler) and scored on every problem of that d.
    DDPM samplers run only at the σ_y in ``ddpm_sigmas`` (None: all). ``report(row)`` is called
    after each row (progress)."""
    rows: list[dict] = []
    for d in dims:
        model = GMMEpsilon.from_schedule(grid_mixture(d, seed=seed), DIFFUSION["noise_schedule"], DIFFUSION["steps"])
        directions = random_directions(projections, d, derived_seed(seed, d, 99))
        prior_cache: dict[str, tuple[torch.Tensor, float]] = {}
        for m in ms:
            for sigma in sigmas:
                problem = make_problem(d, m, sigma, seed)
                gref = reference_generator(seed, d, m, sigma)
                reference, _ = problem.posterior.sample(samples, gref)
                floor = exact_floor(problem, reference, directions, samples, floor_draws, gref)
                floor.pop("per_draw")
                base = dict(d=d, m=m, sigma_y=sigma, samples=samples)
                row = dict(base, sampler="-", nfe=0, method=EXACT, solver="-", params="", seconds=0.0, **floor)
                rows.append(row)
                if report:
                    report(row)
                for sampler_label in samplers:
                    if (SAMPLERS[sampler_label]["sampler"] == "ddpm" and ddpm_sigmas is not None
                            and not any(math.isclose(sigma, s) for s in ddpm_sigmas)):
                        continue
                    diffusion = create_sampler(**DIFFUSION, **SAMPLERS[sampler_label])
                    for method in methods:
                        if sampler_label not in method.samplers:
                            continue
                        start = time.perf_counter()
                        if method.solver == "none" and sampler_label in prior_cache:
                            x, seconds = prior_cache[sampler_label]
                        else:
                            x, _ = sample_method(problem, diffusion, model, method, samples,
                                                 derived_seed(seed, d, 7))
                            seconds = time.perf_counter() - start
                            if method.solver == "none":
                                prior_cache[sampler_label] = (x, seconds)
                        row = dict(base, sampler=sampler_label, nfe=diffusion.num_timesteps, method=method.label,
                                   solver=method.solver, params=format_params(method.params),
                                   seconds=round(seconds, 2), **score(problem, x, reference, directions))
                        rows.append(row)
                        if report:
                            report(row)
    return rows


def format_params(params: dict) -> str:
    """``key=value`` pairs joined by spaces (CSV and table)."""
    return " ".join(f"{k}={v}" for k, v in params.items())


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.{digits}g}"


METRIC_NAMES = {"sw": "sliced Wasserstein-2 distance", "mean_err": "error of the posterior mean",
                "weight_tv": "weight TV"}


def is_exact(row: dict) -> bool:
    """Whether ``row`` is a problem's exact-draw row (the floor, or a legacy second draw)."""
    return row["method"] in (EXACT, LEGACY_EXACT)


def _cell(row: dict, metric: str) -> str:
    """A table cell: the value; for the floor also its 5–95 % range; for a method with
    diverged samples, their count."""
    value = _fmt(row[metric])
    lo, hi = row.get(f"{metric}_p{FLOOR_RANGE[0]:02d}"), row.get(f"{metric}_p{FLOOR_RANGE[1]:02d}")
    if is_exact(row) and lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        return f"{value} [{_fmt(lo)}, {_fmt(hi)}]"
    if row.get("diverged"):
        return f"{value} ({row['diverged']} div.)"
    return value


def _row_order(rows: Sequence[dict]) -> list[tuple[str, str]]:
    order: list[tuple[str, str]] = []
    for r in rows:
        key = (r["sampler"], r["method"])
        if key not in order:
            order.append(key)
    return sorted(order, key=lambda k: not any(is_exact(r) for r in rows if (r["sampler"], r["method"]) == k))


def metric_table(rows: Sequence[dict], sigma: float, metric: str) -> str:
    """Markdown table of one metric at one σ_y: a row per (sampler, method), a column per
    (d, m), so every m is shown. The floor row (first) reads "median [5th, 95th percentile]"
    over its exact draws; cells with no row (e.g. DDPM not run at that σ_y) read "–"."""
    rows = [r for r in rows if math.isclose(r["sigma_y"], sigma)]
    cols = sorted({(r["d"], r["m"]) for r in rows})
    head = ["sampler", "method"] + [f"d={d} m={m}" for d, m in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sampler, method in _row_order(rows):
        cells = [sampler, method]
        for d, m in cols:
            sel = [r for r in rows if r["sampler"] == sampler and r["method"] == method and r["d"] == d
                   and r["m"] == m]
            cells.append(_cell(sel[-1], metric) if sel else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def full_table(rows: Sequence[dict]) -> str:
    """Markdown table of every row (the floor with its 5–95 % range)."""
    head = ["d", "m", "σ_y", "sampler", "method", "SW", "mean err", "weight TV", "diverged", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([str(r["d"]), str(r["m"]), f"{r['sigma_y']:g}", r["sampler"], r["method"]]
                                       + [_cell(dict(r, diverged=0), k) for k in METRICS]
                                       + [str(r["diverged"]), f"{r['seconds']:.1f}"]) + " |")
    return "\n".join(lines)


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def write_results(rows: Sequence[dict], out_dir: str, stem: str, command: str, settings: dict,
                  elapsed: float, provenance: Optional[str] = None) -> tuple[str, str]:
    """Write ``<stem>.csv`` (every row) and ``<stem>.md`` (command, settings, one table per σ_y
    and metric with every (d, m), and the table of every row) into ``out_dir`` atomically;
    returns their paths. ``provenance`` (markdown) replaces the "Made by <command> in <elapsed>"
    sentence (used by ``--combine``)."""
    os.makedirs(out_dir, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else f"{r[k]:.6g}" if isinstance(r[k], float) else r[k])
                         for k in CSV_FIELDS})
    csv_path = os.path.join(out_dir, stem + ".csv")
    _atomic_write(csv_path, buf.getvalue())
    methods = "\n".join(f"- {m.label}: `{m.solver}` {format_params(m.params) or '(no parameters)'}; "
                        f"samplers: {', '.join(m.samplers)}" for m in METHODS)
    md = (f"# Gaussian-mixture posterior benchmark\n\n"
          + (provenance or f"Made by `{command}` in {elapsed / 60:.1f} min ({settings['threads']} CPU thread(s), "
             f"torch {torch.__version__}, {platform.processor() or platform.machine()}).") + "\n\n"
          f"Settings: d ∈ {list(settings['dims'])}, m ∈ {list(settings['ms'])}, "
          f"σ_y ∈ {list(settings['sigmas'])}, "
          f"{settings['samples']} samples per method, {settings['projections']} projections for the sliced "
          f"Wasserstein-2 distance, seed {settings['seed']}; DDPM 1000 at σ_y ∈ "
          f"{'all' if settings.get('ddpm_sigmas') is None else list(settings['ddpm_sigmas'])}.\n\n"
          f"Methods:\n{methods}\n\n"
          f"{_floor_sentence(rows)}\n\n"
          + "".join(f"## σ_y = {sg:g}: {METRIC_NAMES[k]}\n\n{metric_table(rows, sg, k)}\n\n"
                    for sg in sorted({r["sigma_y"] for r in rows}) for k in METRICS)
          + f"## Every problem\n\n{full_table(rows)}\n")
    md_path = os.path.join(out_dir, stem + ".md")
    _atomic_write(md_path, md)
    return csv_path, md_path


def _floor_sentence(rows: Sequence[dict]) -> str:
    """What the exact row of the tables is (floor over draws, or a legacy single draw)."""
    draws = sorted({r.get("floor_draws") for r in rows if r["method"] == EXACT and r.get("floor_draws")})
    text = ""
    if draws:
        text = (f"The row `{EXACT}` is the Monte-Carlo floor: {'/'.join(map(str, draws))} further sets of exact "
                f"posterior draws, each scored against the reference draws like a method; cells read "
                f"\"median [{FLOOR_RANGE[0]}th, {FLOOR_RANGE[1]}th percentile]\" over those draws. A method "
                f"inside that range is as close to the posterior as the metric can tell.")
    if any(r["method"] == LEGACY_EXACT for r in rows):
        text += (f" The row `{LEGACY_EXACT}` is a single exact draw (older runs): not a floor; rerun with "
                 f"`--combine ... --refloor` for the median and range.")
    return text.strip()


_INT_FIELDS = ("d", "m", "nfe", "samples", "diverged")
_FLOAT_FIELDS = ("sigma_y", "sw", "mean_err", "weight_tv", "seconds")
#: Floor columns: optional in a CSV, empty on method rows (read as None).
_OPTIONAL_FIELDS = FLOOR_FIELDS


def read_rows(path: str) -> list[dict]:
    """Rows of a CSV written by :func:`write_results`, with numbers parsed back.

    Raises:
        ValueError: the file lacks a column of ``CSV_FIELDS`` or a number does not parse (names
            the file, line and column).
    """
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in CSV_FIELDS if k not in (reader.fieldnames or ()) and k not in _OPTIONAL_FIELDS]
        if missing:
            raise ValueError(f"{path}: not a benchmarks.gmm CSV (missing column(s) {', '.join(missing)})")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {k: raw.get(k) for k in CSV_FIELDS}
            for k in _INT_FIELDS + _FLOAT_FIELDS + _OPTIONAL_FIELDS:
                if k in _OPTIONAL_FIELDS and raw.get(k) in (None, ""):
                    row[k] = None
                    continue
                try:
                    row[k] = int(raw[k]) if k in _INT_FIELDS + ("floor_draws",) else float(raw[k])
                except (TypeError, ValueError):
                    raise ValueError(f"{path}, line {line}: column {k} = {raw[k]!r} is not a number") from None
            rows.append(row)
    return rows


def combine_rows(tables: Sequence[Sequence[dict]]) -> list[dict]:
    """Merge the rows of several runs into one grid. A row is keyed by (d, m, σ_y, sampler,
    method); a later table's row replaces an earlier one with the same key (the problems and
    the sampler noise depend only on the seed and the key, so a subset run reproduces the rows
    of the full run it extends). Rows come back ordered by d, m, σ_y, then the exact row,
    then samplers and methods in their declared order."""
    merged: dict[tuple, dict] = {}
    for rows in tables:
        for r in rows:
            merged[(r["d"], r["m"], round(float(r["sigma_y"]), 9), r["sampler"], r["method"])] = r
    sampler_rank = {"-": -1, **{s: i for i, s in enumerate(SAMPLERS)}}
    method_rank = {EXACT: -2, LEGACY_EXACT: -1, **{m.label: i for i, m in enumerate(METHODS)}}
    return sorted(merged.values(), key=lambda r: (r["d"], r["m"], float(r["sigma_y"]),
                                                   sampler_rank.get(r["sampler"], len(sampler_rank)),
                                                   method_rank.get(r["method"], len(method_rank)),
                                                   r["method"]))


def refloor_rows(rows: Sequence[dict], seed: int, projections: int, draws: int) -> list[dict]:
    """``rows`` with every problem's exact row replaced by :func:`floor_row` (legacy
    single-draw rows dropped), recomputed from the seed alone: the problems, reference draws and
    directions are those of the run that made the rows, so only ``projections`` (and ``seed``)
    must match that run. Ordered as :func:`combine_rows`."""
    samples: dict[tuple[int, int, float], int] = {}
    for r in rows:
        key = (r["d"], r["m"], float(r["sigma_y"]))
        samples[key] = max(samples.get(key, 0), int(r["samples"]))
    kept = [r for r in rows if not is_exact(r)]
    floors = [floor_row(make_problem(d, m, sigma, seed), seed, n, projections, draws)
              for (d, m, sigma), n in sorted(samples.items())]
    return combine_rows([kept + floors])


def _made_by_line(csv_path: str) -> str:
    """The "Made by ..." sentence of the markdown file next to ``csv_path`` (or a note that it
    is missing)."""
    md = os.path.splitext(csv_path)[0] + ".md"
    try:
        with open(md, encoding="utf-8") as f:
            for line in f:
                if line.startswith("Made by "):
                    return line.strip()[len("Made by "):].rstrip(".")
    except OSError:
        pass
    return f"an unknown command ({os.path.basename(md)} not found)"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gmm",
                                description="Every solver against the exact posterior of a 25-component "
                                            "Gaussian mixture prior.")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized grid (d 8, 80; m 2; σ_y 0.1; 200 samples; both samplers)")
    p.add_argument("--dims", type=int, nargs="+", help="override the dimensions d")
    p.add_argument("--ms", type=int, nargs="+", help="override the measurement counts m")
    p.add_argument("--sigmas", type=float, nargs="+", help="override the noise levels σ_y")
    p.add_argument("--samples", type=int, help="posterior samples per method")
    p.add_argument("--projections", type=int, help="random directions of the sliced Wasserstein distance")
    p.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), help="subset of the samplers")
    p.add_argument("--ddpm-sigmas", type=float, nargs="+", dest="ddpm_sigmas",
                   help="σ_y at which DDPM 1000 runs (full default: 0.1 only; give all three for the whole grid)")
    p.add_argument("--floor-draws", type=int, dest="floor_draws",
                   help="exact draws behind the floor's median and 5-95 %% range (full default 50, quick 20)")
    p.add_argument("--refloor", action="store_true",
                   help="with --combine: recompute the exact floor of every problem of the merged grid "
                        "(cheap: exact sampling only), replacing older exact rows")
    p.add_argument("--methods", nargs="+", metavar="NAME",
                   help="subset of the methods, by label or solver name, case-insensitive (default: all; the "
                        "prior and the exact reference rows are always included)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", default=None,
                   help="output folder (default benchmarks/results; with --quick a new temporary folder, so that a "
                        "smoke run never rewrites committed results)")
    p.add_argument("--name", help="file stem (default gmm, or gmm_quick with --quick)")
    p.add_argument("--combine", nargs="+", metavar="CSV",
                   help="run nothing: merge these CSVs of earlier runs (made with the same --seed and "
                        "--projections; a later file's row wins on the same d, m, σ_y, sampler, method) "
                        "and write <out>/<name>.{csv,md}")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = (tempfile.mkdtemp(prefix="gmm_quick_") if args.quick and not args.combine
                    else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark, print each row as it finishes and the summary table; write CSV and MD."""
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    settings = dict(QUICK if args.quick else FULL)
    for key in ("dims", "ms", "sigmas", "samples", "projections", "ddpm_sigmas", "floor_draws"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings.update(seed=args.seed, threads=args.threads)
    if settings["floor_draws"] < 1:
        print(f"error: --floor-draws must be >= 1, got {settings['floor_draws']}", file=sys.stderr)
        return 2
    if args.refloor and not args.combine:
        print("error: --refloor only works with --combine (a run computes its floor anyway)", file=sys.stderr)
        return 2
    samplers = tuple(args.samplers or SAMPLERS)
    methods = METHODS
    if args.methods:
        wanted = {w.lower() for w in args.methods}
        known = {m.label.lower() for m in METHODS} | {m.solver.lower() for m in METHODS}
        unknown = sorted(wanted - known)
        if unknown:
            print(f"error: --methods: unknown method(s) {', '.join(unknown)}; valid: "
                  f"{', '.join(m.label for m in METHODS)} (or their solver names)", file=sys.stderr)
            return 2
        methods = tuple(m for m in METHODS if m.solver == "none" or m.label.lower() in wanted
                        or m.solver.lower() in wanted)
    command = "python -m benchmarks.gmm" + ("" if argv is None and len(sys.argv) <= 1 else " " + " ".join(
        sys.argv[1:] if argv is None else argv))
    if args.combine:
        return _combine(args, command, settings)
    start = time.perf_counter()

    def report(row: dict) -> None:
        print(f"d={row['d']:<4} m={row['m']} σ_y={row['sigma_y']:<5g} {row['sampler']:<9} {row['method']:<20} "
              f"SW {_fmt(row['sw']):>7}  mean err {_fmt(row['mean_err']):>7}  TV {_fmt(row['weight_tv']):>6}  "
              f"diverged {row['diverged']:<4} {row['seconds']:.1f}s  [{(time.perf_counter() - start) / 60:.1f} min]",
              flush=True)

    rows = run(settings["dims"], settings["ms"], settings["sigmas"], settings["samples"], settings["projections"],
               seed=args.seed, methods=methods, samplers=samplers, ddpm_sigmas=settings["ddpm_sigmas"],
               floor_draws=settings["floor_draws"], report=report)
    elapsed = time.perf_counter() - start
    stem = args.name or ("gmm_quick" if args.quick else "gmm")
    csv_path, md_path = write_results(rows, args.out, stem, command, settings, elapsed)
    for sg in sorted({r["sigma_y"] for r in rows}):
        print(f"\nσ_y = {sg:g}, weight TV\n{metric_table(rows, sg, 'weight_tv')}")
    print(f"\nwrote {csv_path} and {md_path} in {elapsed / 60:.1f} min")
    return 0


def _combine(args: argparse.Namespace, command: str, settings: dict) -> int:
    """``--combine``: merge earlier runs' CSVs into one CSV and table; exit 2 on a bad file."""
    tables = []
    for path in args.combine:
        try:
            tables.append(read_rows(path))
        except (OSError, ValueError) as e:
            print(f"benchmarks.gmm --combine: {e}", file=sys.stderr)
            return 2
    rows = combine_rows(tables)
    if not rows:
        print("benchmarks.gmm --combine: the CSVs hold no rows", file=sys.stderr)
        return 2
    if args.refloor:
        rows = refloor_rows(rows, settings["seed"], settings["projections"], settings["floor_draws"])
    ddpm = sorted({r["sigma_y"] for r in rows if r["sampler"].startswith("DDPM")})
    sigmas = sorted({r["sigma_y"] for r in rows})
    settings.update(dims=sorted({r["d"] for r in rows}), ms=sorted({r["m"] for r in rows}), sigmas=sigmas,
                    samples=max(r["samples"] for r in rows), ddpm_sigmas=None if ddpm == sigmas else ddpm)
    sources = "".join(f"\n- `{os.path.basename(p)}`: made by {_made_by_line(p)}" for p in args.combine)
    provenance = (f"Merged by `{command}` (a later file's row replaces an earlier one"
                  + (f"; the exact floor recomputed from {settings['floor_draws']} exact draws per problem"
                     if args.refloor else "") + f") from the rows of:{sources}")
    stem = args.name or "gmm"
    csv_path, md_path = write_results(rows, args.out, stem, command, settings, 0.0, provenance=provenance)
    print(f"merged {len(rows)} rows from {len(args.combine)} file(s) into {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
