"""DiffPIR, plug-and-play image restoration with a diffusion denoiser (Zhu, Zhang, Liang, Cao,
Wen, Timofte & Van Gool, "Denoising Diffusion Models for Plug-and-Play Image Restoration", CVPR
2023 workshops (NTIRE), arXiv:2305.08995; reference code yuanzhi-zhu/DiffPIR
``main_ddpir_deblur.py`` / ``main_ddpir_sisr.py`` / ``main_ddpir_inpainting.py``): half-quadratic
splitting with the network's Tweedie estimate as the prior step, an exact data-proximal step, and a
ζ-mixed re-noising. No gradient through the network: one network call per step, and the proximal
step is solved in closed form (Woodbury + ``physics.cov_solve``), without inner iterations."""
from __future__ import annotations

from typing import Any

import torch

from solvers.base import Param, Solver, check_sigma, compute_dtype, per_sample, register_solver

#: Floor of σ (on the [0, 1] image scale) in ρ_t, as the reference code (``max(0.001, noise_level_img)``),
#: so that noiseless measurements keep ρ_t > 0.
SIGMA_FLOOR = 1e-3


@register_solver("DiffPIR")
class DiffPIR(Solver):
    """DiffPIR step (Zhu et al. 2023, Algorithm 1, with the data subproblem of §3 solved exactly):

        σ̄_t = √(1 − ᾱ_t) / √ᾱ_t,     ρ_t = λ σ² / σ̄_t²                               (Alg. 1)
        x̂0  = argmin_x ‖y − A x‖² + ρ_t ‖x − x0_hat‖²                                (Alg. 1)
            = (AᵀA + ρ_t I)⁻¹ (Aᵀ y + ρ_t x0_hat)
            = x0_hat + Aᵀ (ρ_t I + A Aᵀ)⁻¹ (y − A x0_hat)          (Woodbury / push-through identity)
        ε̂'  = (x_t − √ᾱ_t x̂0) / √(1 − ᾱ_t)                                          (Alg. 1)
        x_{t-1} = √ᾱ_{t-1} x̂0 + √(1 − ᾱ_{t-1}) (√(1 − ζ) ε̂' + √ζ ε)                  (Alg. 1)

    with x0_hat the network's Tweedie estimate (Alg. 1), ε ~ N(0, I) the sampler's
    per-image noise ``step.noise`` (the sampler's proposal and η are not used), and the solve
    (ρ_t I + A Aᵀ)⁻¹ = ``physics.cov_solve(·, r2=1, sigma2=ρ_t)``: exact for every operator with
    its own solve (blur, super-resolution, inpainting, identity, dense), conjugate gradients for
    the others. σ is the measurement-noise std on the [0, 1] image scale, as in the paper's
    experiments and the reference code (which solves the data step on [0, 1] images with
    ``sigma = noise_level_img``): σ = max(σ_n / 2, 1e-3) for our σ_n on the [-1, 1] scale, so the
    paper's λ values apply unchanged. The solution of the data step is the same on either scale.
    At the last step (ᾱ_{t-1} = 1) x_0 = x̂0, as Algorithm 1 (the reference code skips the data
    step there and returns x0_hat: ``final_data_step: false``; ρ_0 is large, so the two differ
    little).

    Checked against the reference code only in part (tests/test_ref_diffpir.py): its data step
    ``utils_sisr.data_solution`` (FFT closed form, on [0, 1] images with τ = ρ_t) equals our
    ``prox`` on circular blur to 1e-5 at high, middle and low noise. Its sampling loop is inline
    in ``main_ddpir_*.py`` (not callable), so the re-noising and whole runs were compared by
    reading only; its other deliberate differences: the "quad" time grid (ours: the sampler's),
    a y-based start (ours: the sampler's x_T), no x0_hat clipping.

    Parameters (defaults: the reference code's Gaussian-deblurring run, ``main_ddpir_deblur.py``,
    λ = 7 and ζ = 0.3 at σ = 0.05 on [0, 1]):
        lam (float > 0, default 7.0): λ, the weight of the prior in ρ_t.
        zeta (float in [0, 1], default 0.3): ζ, the share of fresh noise in the re-noising.
        final_data_step (bool, default true): take the data step at the last step too
            (Algorithm 1); false returns x0_hat there, as the reference code.

    Needs a physics with a Gaussian σ_n >= 0 (any operator: the solve falls back to CG).
    """

    needs_grad = False
    params = {"lam": Param(7.0, "positive", "λ: ρ_t = λ σ² / σ̄_t², the prior's weight in the data step"),
              "zeta": Param(0.3, "nonneg", "ζ in [0, 1]: share of fresh noise when re-noising x̂0"),
              "final_data_step": Param(True, "bool", "data step at the last step too (false: x0_hat, the reference's)", neutral=True)}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.zeta > 1.0:
            raise ValueError(f"solver {self.name!r} parameter 'zeta' must be <= 1, got {self.zeta!r}")

    def check(self, physics: Any) -> None:
        """Needs a physics whose noise model has a real σ_n >= 0."""
        super().check(physics)
        check_sigma(physics, self.name)

    def rho(self, alpha_bar: torch.Tensor, sigma_n: float) -> torch.Tensor:
        """ρ_t = λ σ² / σ̄_t² with σ = max(σ_n / 2, 1e-3), σ̄_t² = (1 − ᾱ_t) / ᾱ_t; (N,) like alpha_bar."""
        sigma = max(float(sigma_n) / 2.0, SIGMA_FLOOR)
        return self.lam * sigma ** 2 * alpha_bar / (1.0 - alpha_bar)

    def prox(self, z: torch.Tensor, y: torch.Tensor, rho: torch.Tensor, physics: Any) -> torch.Tensor:
        """argmin_x ‖y − A x‖² + ρ ‖x − z‖² = z + Aᵀ (ρ I + A Aᵀ)⁻¹ (y − A z); z (N, C, H, W),
        ρ (N,) > 0. Returns (N, C, H, W) in z's dtype."""
        v = physics.cov_solve(y.to(z.dtype) - physics.A(z), 1.0, rho)
        return z + physics.A_T(v).to(z.dtype)

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One DiffPIR step: x_{t-1} (N, C, H, W); sets ``step.residual``."""
        with torch.no_grad():
            dtype = compute_dtype(step.proposal)
            x0 = step.x0_hat.detach().to(dtype)
            xt = step.x_t.detach().to(dtype)
            yy = y.detach().to(dtype)
            step.residual = (yy - physics.A(x0)).flatten(1).norm(dim=1)
            ab = step.alpha_bar.to(device=x0.device, dtype=dtype)
            if step.t_prev < 0 and not self.final_data_step:
                return x0.to(step.proposal.dtype)                # the reference code's last step
            x0_new = self.prox(x0, yy, self.rho(ab, physics.sigma_n), physics)
            a, a_prev = per_sample(ab, x0), per_sample(step.alpha_bar_prev.to(device=x0.device, dtype=dtype), x0)
            eps = (xt - a.sqrt() * x0_new) / (1.0 - a).sqrt()
            z = step.noise.detach().to(dtype)
            mix = (1.0 - self.zeta) ** 0.5 * eps + self.zeta ** 0.5 * z
            x_prev = a_prev.sqrt() * x0_new + (1.0 - a_prev).clamp(min=0).sqrt() * mix
            return x_prev.to(step.proposal.dtype)
