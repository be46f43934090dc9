"""OPC: diffusion posterior sampling with the optimal posterior covariance (Peng, Zheng, Dai, Xiao,
Li, Zou & Xiong, "Improving Diffusion Models for Inverse Problems Using Optimal Posterior
Covariance", ICML 2024, arXiv:2402.02149; code xypeng9903/k-diffusion-inverse-problems @ d5ae606,
``condition/condition.py``).

The denoising posterior p(x_0 | x_t) is approximated by N(μ, Σ) with μ = x0_hat (Tweedie) and a
covariance Σ chosen by maximum likelihood instead of by hand (paper §4):

- ``cov: analytic`` — Σ = r_t² I, r_t² = E ||x_0 − x0_hat(x_t)||² / d estimated once from the
  prior's training images (paper eq. 20, as Analytic-DPM; table made by
  ``python -m benchmarks.analytic_variance``, shipped beside the checkpoint).
- ``cov: convert`` — Σ = diag(v), the per-pixel variance converted from the network's learned
  reverse variance Σ_θ(x_t, t) of p(x_{t-1} | x_t) (paper eq. 22):
  v = (Σ_θ − β̃_t) / c1_t², c1_t = β_t √ᾱ_{t-1} / (1 − ᾱ_t), floored at 1e-6, with the
  quantities of the unrespaced 1000-step process at the network's timestep, as the reference
  (its ``diffusion`` has no respacing).

In both, as in the reference, the maximum-likelihood Σ is used only where the VE noise level
σ_t = √((1 − ᾱ_t) / ᾱ_t) is below ``mle_sigma_thres`` (0.2); above it Σ = (1 − ᾱ_t) I, ΠGDM's
(the reference's σ²/(1 + σ²)).

The conditional mean (paper eqs. 9-11; ``mat`` of the reference's mat solvers):

    m   = Aᵀ (σ_n² I + A Σ Aᵀ)⁻¹ (y − A μ)
    II: x̂ = μ + Σ m                                    (no backprop; "Type II guidance")
    I:  x̂ = μ + (1 − ᾱ_t)/√ᾱ_t · (∂μ/∂x_t)ᵀ m           (one VJP; "Type I guidance")

then clipped to [−1, 1] (the reference's ``hat_x0.clip(-1, 1)``). Type I is the reference's
x̂ = μ + σ² ∇_x (m·μ) in its VE variable x = x_t / √ᾱ_t (∂/∂x = √ᾱ_t ∂/∂x_t, σ² = (1−ᾱ)/ᾱ).

The solve: Σ = r² I by ``physics.cov_solve`` (exact for circular blur, super-resolution,
inpainting); diagonal Σ with a pixel mask (inpainting) exactly, elementwise; any other diagonal Σ
by conjugate gradients on the symmetric positive-definite σ_n² I + A diag(v) Aᵀ with A and Aᵀ
only (:func:`cg_diag_cov_solve`; the reference uses scipy's CG, tol 1e-4, on the same system).
σ_n is floored at ``sigma_floor`` (the reference's 1e-3; its super-resolution solver floors at
1e-2, which matters only for σ_n < 0.01).

Re-noising (the reference's k-diffusion Euler step, converted to the VP grid): with the
conditional ε_y = (x_t − √ᾱ_t x̂) / √(1 − ᾱ_t),

    x_{t-1} = √ᾱ_{t-1} x̂ + √(1 − ᾱ_{t-1} − σ_t²) ε_y + σ_t z

(σ_t, z: the loop's sampler noise). For η = 0 (σ_t = 0) this is exactly the reference's
``sample_euler`` step x_{k+1} = x̂ + (σ_{k+1}/σ_k)(x_k − x̂) in VE coordinates
(x_k = x_t / √ᾱ_t), the parity test's loop. Deliberate differences from the reference's
experiments, stated: the time grid is the loop's (``timestep_respacing``), not Karras' ρ = 7
grid; one network call per step (no Heun second stage), the loop's η-noise in place of Karras'
churn (s_churn = 80); ``convert`` needs the network's variance output, which the loop's ``Step``
does not carry, so it makes one extra, counted, network call on each step where σ_t <
``mle_sigma_thres`` (:func:`learned_variance`; about 6 of 100 DDIM steps at the default).
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from solvers.base import Param, Solver, check_sigma, compute_dtype, per_sample, register_solver

#: the repository root, for the shipped table's relative path
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: floor of the learned-variance conversion (the reference's ``.clip(min=1e-6)``, eq. 22).
CONVERT_FLOOR = 1e-6

_PARAMS = {
    "cov": Param("analytic", "choice", "posterior covariance: analytic (r_t² I from the table) or "
                 "convert (diagonal, from the network's learned variance)", choices=("analytic", "convert")),
    "guidance": Param("II", "choice", "II: x̂ = μ + Σ m (no backprop); I: x̂ = μ + (1−ᾱ)/√ᾱ Jᵀ m (one VJP)",
                      choices=("II", "I")),
    "mle_sigma_thres": Param(0.2, "nonneg", "use the maximum-likelihood Σ where σ_t = √((1−ᾱ)/ᾱ) < this, "
                             "else ΠGDM's (1−ᾱ) I"),
    "sigma_floor": Param(1e-3, "positive", "σ_n is floored at this value in the solve"),
    "var_table": Param("ckpts/mnist32_analytic_var.pt", "str", "the analytic r_t² table "
                       "(python -m benchmarks.analytic_variance), relative to the working directory or the repository"),
    "cg_tol": Param(1e-6, "positive", "relative residual of the CG solve (diagonal Σ, non-mask A)"),
    "cg_max_iter": Param(200.0, "positive", "iteration cap of that CG solve"),
}


def load_variance_table(path: str) -> dict[str, torch.Tensor]:
    """The analytic table of :mod:`benchmarks.analytic_variance`: ``t`` (T,), ``alpha_bar`` (T,),
    ``r2`` (T,) float64. A relative ``path`` is taken from the working directory, else from the
    repository root (where the shipped table lies). Raises ValueError (one line, naming the file and the command that makes
    it) for a missing or malformed file."""
    hint = "make it with: python -m benchmarks.analytic_variance"
    if not os.path.isfile(path) and not os.path.isabs(path) and os.path.isfile(os.path.join(REPO_ROOT, path)):
        path = os.path.join(REPO_ROOT, path)
    if not os.path.isfile(path):
        raise ValueError(f"solver 'OPC' parameter 'var_table': {path!r} is not a file; {hint}")
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise ValueError(f"solver 'OPC' parameter 'var_table': {path!r} cannot be read ({exc}); {hint}") from None
    if not isinstance(table, dict) or not all(k in table for k in ("alpha_bar", "r2")) or \
            table["r2"].shape != table["alpha_bar"].shape or not bool((table["r2"] > 0).all()):
        raise ValueError(f"solver 'OPC' parameter 'var_table': {path!r} lacks (T,) 'alpha_bar' and positive "
                         f"'r2'; {hint}")
    return table


def learned_variance(step: Any) -> torch.Tensor:
    """The network's learned reverse variance Σ_θ(x_t, t) of the *unrespaced* process at the
    network's timestep τ = timestep_map[t] (guided-diffusion's ``learned_range``: log Σ_θ =
    f log β_τ + (1 − f) log β̃_τ (clipped), f = (v + 1)/2, v the second output channel group),
    (N, C, H, W) float64.

    The loop's :class:`sampling.Step` does not carry the network's variance output, so this makes
    one extra network call on x_t, counted in ``step.nfe``. It is the one place OPC reaches the
    network directly: move it behind the prior interface when that exposes the variance.

    Raises:
        ValueError: no model / diffusion on the step, or a network without the variance half
            (``learn_sigma: false``).
    """
    if step.model is None or step.diffusion is None:
        raise ValueError("solver 'OPC' cov 'convert' needs the network (a Step built by sampling.sample)")
    d = step.diffusion
    x = step.x_t.detach()
    tb = step.t_batch()
    with torch.no_grad():
        out = step.model(x, d.model_timesteps(tb))
    step.nfe.add(1)
    c = x.shape[1]
    if out.shape[1] != 2 * c:
        raise ValueError(f"solver 'OPC' cov 'convert' needs a network with learned variances (learn_sigma: "
                         f"true, 2×{c} output channels), got {out.shape[1]} channels")
    tau = int(d.timestep_map[step.t])
    betas = original_betas(d)
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
    post_logvar_clipped = np.log(np.append(post_var[1], post_var[1:]))
    frac = (out[:, c:].double() + 1.0) / 2.0
    log_var = frac * math.log(betas[tau]) + (1.0 - frac) * float(post_logvar_clipped[tau])
    return torch.exp(log_var)


def original_betas(diffusion: Any) -> np.ndarray:
    """(T,) β of the unrespaced process of ``diffusion`` (its ``original_betas``; or its own β
    when it is not respaced). Raises ValueError otherwise."""
    betas = getattr(diffusion, "original_betas", None)
    if betas is not None:
        return np.asarray(betas, dtype=np.float64)
    if list(diffusion.timestep_map) == list(range(diffusion.num_timesteps)):
        return np.asarray(diffusion.betas, dtype=np.float64)
    raise ValueError("solver 'OPC' cov 'convert' needs the unrespaced β of the diffusion (original_betas)")


def convert_x0_var(step: Any) -> torch.Tensor:
    """Paper eq. 22: Var[x_0 | x_t] ≈ (Σ_θ − β̃_τ) / c1_τ², floored at 1e-6, per pixel
    (N, C, H, W) float64, with the unrespaced process's β̃_τ and c1_τ = β_τ √ᾱ_{τ−1}/(1 − ᾱ_τ)
    at τ = timestep_map[t] (the reference's ``posterior_variance`` / ``posterior_mean_coef1``)."""
    var = learned_variance(step)
    betas = original_betas(step.diffusion)
    tau = int(step.diffusion.timestep_map[step.t])
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = float(betas[tau] * (1.0 - ab_prev[tau]) / (1.0 - ab[tau]))
    coef1 = float(betas[tau] * math.sqrt(ab_prev[tau]) / (1.0 - ab[tau]))
    return ((var - post_var) / coef1 ** 2).clamp(min=CONVERT_FLOOR)


def cg_diag_cov_solve(physics: Any, v: torch.Tensor, var: torch.Tensor, sigma2: float,
                      tol: float = 1e-6, max_iter: int = 200) -> torch.Tensor:
    """(σ² I + A diag(var) Aᵀ)⁻¹ v by conjugate gradients (Hestenes & Stiefel 1952) with A, Aᵀ only.

    Args:
        physics: an ``operators.Physics`` (A, A_T).
        v: measurement-shaped (N, ...) right-hand side.
        var: (N, C, H, W) per-pixel variances > 0 (image space), or a tensor broadcasting to it.
        sigma2: σ² > 0.
        tol, max_iter: stop when every sample's residual is below tol · ||v|| or after max_iter.

    Returns:
        v's shape, in the computation dtype of v. The system is symmetric positive definite
        for σ² > 0 and var >= 0, so CG converges.
    """
    from operators.physics import cg
    b = v.detach()

    def apply(p: torch.Tensor) -> torch.Tensor:
        return sigma2 * p + physics.A(var * physics.A_T(p).to(b.dtype)).to(b.dtype)

    return cg(apply, b, tol, int(max_iter))


@register_solver("OPC")
class OPC(Solver):
    """OPC (Peng et al., ICML 2024): the conditional-mean step with the optimal (maximum-
    likelihood) posterior covariance, Type II (no backprop) or Type I (one VJP); see the module
    docstring for the equations, the re-noising and the deliberate differences.

    Parameters (keyword; the reference's names where it has them):
        cov ("analytic" | "convert", default "analytic"): Σ from the r_t² table or converted
            from the network's learned variance.
        guidance ("II" | "I", default "II"): the reference's ``--guidance``.
        mle_sigma_thres (float >= 0, default 0.2): the reference's ``--mle-sigma-thres``.
        sigma_floor (float > 0, default 1e-3): floor of σ_n in the solve.
        var_table (str, default ckpts/mnist32_analytic_var.pt): the analytic table.
        cg_tol, cg_max_iter: the CG solve of a diagonal Σ through a non-mask operator.

    Reads ``step.x_t``, ``step.x0_hat``, ``step.alpha_bar``, ``step.alpha_bar_prev``,
    ``step.sigma_t``, ``step.noise`` (and ``step.diffusion.timestep_map``, ``step.model`` for
    convert). ``needs_grad`` is True for guidance I only (set per instance).

    Raises:
        ValueError: (construction) a bad parameter; (``check``) no physics or no real σ_n;
            (first analytic step) a missing / malformed table or one whose ᾱ differs from the
            sampler's.
    """

    needs_grad = False
    params = _PARAMS

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.needs_grad = self.guidance == "I"
        self._table: dict[str, torch.Tensor] | None = None

    def check(self, physics: Any) -> None:
        """Needs a physics whose noise model has a real σ_n >= 0."""
        super().check(physics)
        check_sigma(physics, self.name)

    def analytic_r2(self, step: Any) -> float:
        """r_t² of the table at the network's timestep τ = timestep_map[t] (the reference takes
        the table entry of the nearest σ; the table here is per timestep, so that is τ's).
        Raises ValueError when the table's ᾱ_τ differs from the sampler's by more than 1e-6."""
        if self._table is None:
            self._table = load_variance_table(self.var_table)
        d = step.diffusion
        tau = int(d.timestep_map[step.t]) if d is not None else int(step.t)
        ab = self._table["alpha_bar"]
        if tau >= len(ab) or abs(float(ab[tau]) - float(step.alpha_bar[0])) > 1e-6:
            raise ValueError(f"solver 'OPC' var_table {self.var_table!r}: its ᾱ at timestep {tau} does not match "
                             f"the sampler's {float(step.alpha_bar[0]):.6g} (a table of another schedule)")
        return float(self._table["r2"][tau])

    def x0_var(self, step: Any, a: torch.Tensor) -> torch.Tensor:
        """Σ of the step: (N, 1, 1, 1) isotropic or (N, C, H, W) diagonal, float64-compatible.
        a: ᾱ_t as (N, 1, 1, 1)."""
        sigma_ve = ((1.0 - a) / a).sqrt()
        if float(sigma_ve.flatten()[0]) >= self.mle_sigma_thres:
            return 1.0 - a
        if self.cov == "analytic":
            return torch.full_like(a, self.analytic_r2(step))
        return convert_x0_var(step).to(a.dtype)

    def solve(self, physics: Any, diff: torch.Tensor, var: torch.Tensor, sigma2: float) -> torch.Tensor:
        """m = Aᵀ (σ² I + A Σ Aᵀ)⁻¹ diff, image-shaped (N, C, H, W); exact for isotropic Σ and
        for a pixel mask, CG otherwise."""
        if var.shape[1:] == (1,) * (var.dim() - 1):
            return physics.A_T(physics.cov_solve(diff, var.flatten(), sigma2)).to(diff.dtype)
        if physics.is_pixel_mask:
            mask = physics.A(torch.ones_like(var))
            return physics.A_T(diff / (sigma2 + mask * var)).to(diff.dtype)
        u = cg_diag_cov_solve(physics, diff, var, sigma2, tol=self.cg_tol, max_iter=int(self.cg_max_iter))
        return physics.A_T(u).to(diff.dtype)

    def conditional_x0(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """x̂ = E[x_0 | x_t, y] of the module docstring, clipped to [−1, 1]; (N, C, H, W) in the
        computation dtype."""
        x_t = step.x_t
        dtype = compute_dtype(step.proposal)
        mu = step.x0_hat.detach().to(dtype)
        a = per_sample(step.alpha_bar.to(device=mu.device, dtype=dtype), mu)
        var = self.x0_var(step, a).to(dtype)
        sigma2 = max(physics.sigma_n, self.sigma_floor) ** 2
        with torch.no_grad():
            m = self.solve(physics, y.detach().to(dtype) - physics.A(mu), var, sigma2)
        if self.guidance == "II":
            x_hat = mu + var * m
        else:
            (vjp,) = torch.autograd.grad(step.x0_hat, x_t, grad_outputs=m.to(step.x0_hat.dtype))
            x_hat = mu + (1.0 - a) / a.sqrt() * vjp.detach().to(dtype)
        return x_hat.clamp(-1.0, 1.0)

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One OPC step: x_{t-1} (N, C, H, W), dtype of ``step.proposal``; sets ``step.residual``."""
        dtype = compute_dtype(step.proposal)
        x_hat = self.conditional_x0(step, y, physics)
        with torch.no_grad():
            x_t = step.x_t.detach().to(dtype)
            step.residual = physics.residual(y, step.x0_hat.detach())
            a = per_sample(step.alpha_bar.to(device=x_t.device, dtype=dtype), x_t)
            a_prev = per_sample(step.alpha_bar_prev.to(device=x_t.device, dtype=dtype), x_t)
            sigma_t = torch.as_tensor(step.sigma_t, device=x_t.device, dtype=dtype)
            eps_y = (x_t - a.sqrt() * x_hat) / (1.0 - a).sqrt()
            x_prev = a_prev.sqrt() * x_hat + (1.0 - a_prev - sigma_t ** 2).clamp(min=0).sqrt() * eps_y \
                + sigma_t * step.noise.to(dtype)
            return x_prev.to(step.proposal.dtype)
