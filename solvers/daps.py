"""DAPS, decoupled annealing posterior sampling (Zhang, Chu, Berner, Sun, Azizzadenesheli &
Anandkumar, "Improving Diffusion Inverse Problem Solving with Decoupled Noise Annealing", CVPR
2025; reference code zhangbingliang2019/DAPS): at every noise level, sample x_0 from an
approximation of p(x_0 | x_t, y) (Langevin dynamics, or here also the exact Gaussian conditional)
and re-noise it to the next level, so that consecutive x_t are only coupled through x_0."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from solvers.base import Param, Solver, check_sigma, compute_dtype, per_sample, register_solver

#: ``tau: auto`` uses σ_n, floored here for noiseless measurements (numerical guard, not tuning).
TAU_FLOOR = 1e-3
#: Langevin noise is drawn per image in chunks of at most this many values (memory bound; the
#: chunking depends on the image size only, so results do not depend on the batch size).
CHUNK_VALUES = 1 << 22


@register_solver("DAPS", "daps")
class DAPS(Solver):
    """DAPS (Zhang et al. 2025, Algorithm 1), on the loop's noise levels (the respaced steps of
    the sampler are the annealing levels; DDPM and DDIM give the same method, only the levels
    differ; the sampler's own proposal is not used).

    At step t, with ᾱ = ᾱ_t, ᾱ' = ᾱ_{t-1}, σ_t² = (1−ᾱ)/ᾱ (the level in the paper's
    x = x_0 + σ n parametrisation of x_t/√ᾱ):

    1. x0_hat = x_0 of the probability-flow ODE from x_t at t to 0 (§3.3, "x̂_0(x_t) by solving
       the ODE"): ``ode_steps`` = 1 is Tweedie's estimate of the loop's network call; k > 1 runs
       k DDIM (η = 0) steps t = s_0 > s_1 > … > s_{k−1} > −1 on the respaced grid (k − 1 extra
       network calls, ``step.denoise``; NFE = min(k, t + 1) per level, every index t … 0 when
       fewer than k remain; the loop's ``SampleResult.nfe`` counts them).
    2. x_0 ~ p(x_0 | x_t, y) ∝ N(x_0; x0_hat, r_t² I) · N(y; A x_0, τ² I) with r_t = σ_t (the
       paper's choice r_t = σ_t, eq. 8 and §3.3; ``inv_var`` = λ > 0 uses r_t² = 1/(1/σ_t² + λ)):
       - ``langevin: true`` (the paper, eq. 9): K = ``langevin_steps`` steps from x0_hat,
             x ← x + η_t [Aᵀ(y − A x)/τ² − (x − x0_hat)/r_t²] + √(2 η_t) ξ,
         η_t = lr · (1 + (i/(T+1))(lr_min_ratio − 1)) (the reference code's linear decay over
         the annealing, i the step count, T the number of levels: its ratio is step / num_steps
         of a scheduler that has T + 1 points; until 2026-12-08 this was i/T), or ``lr: auto``:
         η_t = ½ / (s_max²/τ² + 1/r_t²), half the stability limit of this quadratic potential
         (s_max the largest singular value of A from ``physics.spectral``, else the operator's
         bound ``physics.jacobian_norm`` on ||J_A||, else 1). Only A and its VJP are used
         (J_A(x)ᵀ(y − A(x)) for a nonlinear A, as the paper's phase retrieval and HDR).
       - ``langevin: false`` (exact, not in the paper): for linear A and Gaussian noise this
         conditional is Gaussian with mean x0_hat + r² Aᵀ C⁻¹ (y − A x0_hat) and covariance
         r² I − r⁴ Aᵀ C⁻¹ A, C = τ² I + r² A Aᵀ; one exact draw by perturb-and-solve
         (Matheron's rule): x̃ = x0_hat + r ξ, ỹ = A x̃ + τ ν, x_0 = x̃ + r² Aᵀ C⁻¹ (y − ỹ)
         (``physics.cov_solve``; exact where the operator has it, CG otherwise).
    3. x_{t-1} = √ᾱ' x_0 + √(1−ᾱ') z (the paper's x_0 + σ_{t-1} n in the VP scale), z the
       loop's per-image noise ``step.noise`` (zeros at the last step, which returns x_0).

    Parameters (reference code names where they exist):
        ode_steps (float >= 1, default 1): network calls per level for x0_hat (an integer).
        langevin (bool, default true): Langevin steps (the paper) or the exact Gaussian draw.
        langevin_steps (float >= 0, default 100): K (``num_steps`` of the MCMC config).
        lr (float >= 0 or "auto", default 1e-4): Langevin step size (``lr``).
        lr_min_ratio (float > 0, default 0.01): final / initial step size (``lr_min_ratio``).
        tau (float >= 0 or "auto", default "auto"): τ, the likelihood's noise std (``tau``; the
            paper's image configs use 0.01; auto = σ_n of the physics, floored at 1e-3).
        inv_var (float >= 0, default 0): λ of r_t² = 1/(ᾱ/(1−ᾱ) + λ), CoDPS's posterior variance
            of an x_0 ~ N(x0_hat, λ⁻¹ I) model (not in the paper); 0 gives the paper's r_t² = σ_t²,
            which exceeds the prior's own variance at high noise (x_0 over-dispersed there).
        reference_tau (bool, default false): read a numeric ``tau`` as the reference code's,
            whose data term is the gradient of ||A x − y||²/τ² (no ½): the likelihood std is
            then τ/√2. False: τ is the std of N(y; A x, τ² I), the paper's eq. 9.

    Checked against the reference code (zhangbingliang2019/DAPS @ 098df6b, ``sampler.DAPS`` with
    its Langevin MCMC; tests/test_ref_daps.py, 1e-5) with ``ode_steps: 1``. Deliberate
    differences: τ's convention (``reference_tau``); x0_hat is clipped when the diffusion config
    clips (ours: ``clip_denoised: true``; the reference's VPPrecond does not; the test runs
    unclipped); the levels are the sampler's respaced grid (the reference: 200 EDM poly-7 levels
    σ = 100 … 0.1 on a continuous VP network time (M−1)·t(σ)); ``ode_steps`` > 1 takes DDIM steps
    on that grid (Euler steps in σ, as the reference's PF-ODE, but on other points: the
    reference takes 5 poly-7 steps down to σ = 0.01); τ is floored at 1e-3 (the reference: none).

    Reads ``step.x0_hat``, ``step.eps``, ``step.x_t`` (ode_steps > 1), ``step.alpha_bar``,
    ``step.alpha_bar_prev``, ``step.noise``, ``step.i``; draws ``step.randn``; sets
    ``step.residual`` (||y − A x_0||).

    Raises:
        ValueError: (construction) ode_steps not an integer >= 1 or langevin_steps not an
            integer; (check) a noise model without a real sigma >= 0.
    """

    needs_grad = False
    needs_linear = False       # the Langevin steps use A's VJP; ``langevin: false`` needs a linear A

    @staticmethod
    def nfe_per_step(params: dict) -> int:
        """Network calls per annealing level for the budget planner (benchmarks.evaluate):
        ``ode_steps`` (the loop counts min(ode_steps, t + 1) near the end, so a run spends at
        most budget calls)."""
        return int(float(params.get("ode_steps", 1)))

    params = {
        "ode_steps": Param(1.0, "positive", "network calls per level for x0_hat (PF-ODE steps, integer >= 1)"),
        "langevin": Param(True, "bool", "Langevin steps (paper) or the exact Gaussian conditional draw"),
        "langevin_steps": Param(100.0, "nonneg", "Langevin steps per level (integer)"),
        "lr": Param(1e-4, "nonneg_or_auto", "Langevin step size, or 'auto': half the stability limit"),
        "lr_min_ratio": Param(0.01, "positive", "final / initial Langevin step size (linear decay)"),
        "tau": Param("auto", "nonneg_or_auto", "τ, noise std of the likelihood, or 'auto' = σ_n"),
        "inv_var": Param(0.0, "nonneg", "λ: r_t² = 1/(ᾱ/(1−ᾱ) + λ) (0 = the paper's r_t = σ_t)"),
        "reference_tau": Param(False, "bool", "a numeric tau is the reference code's: likelihood std τ/√2 "
                               "(its data term is ∇||Ax − y||²/τ²)"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        for name, low in (("ode_steps", 1), ("langevin_steps", 0)):
            value = getattr(self, name)
            if value != int(value) or value < low:
                raise ValueError(f"solver 'DAPS' parameter {name!r} must be an integer >= {low}, got {value!r}")
            setattr(self, name, int(value))

    def check(self, physics: Any) -> None:
        """Needs a physics whose noise model has a real σ_n >= 0."""
        super().check(physics)
        check_sigma(physics, self.name)
        if not self.langevin and not physics.is_linear:
            raise ValueError(f"solver {self.name!r} with langevin: false (the exact Gaussian draw) needs a linear "
                             f"operator; {physics.name!r} is nonlinear: use langevin: true")

    def tau_value(self, physics: Any) -> float:
        """τ, the likelihood std: the parameter (/√2 with ``reference_tau``), or max(σ_n, 1e-3)
        for ``auto``."""
        if self.tau == "auto":
            return max(physics.sigma_n, TAU_FLOOR)
        return float(self.tau) / math.sqrt(2.0) if self.reference_tau else float(self.tau)

    def ode_x0(self, step: Any) -> torch.Tensor:
        """x0_hat by ``ode_steps`` DDIM (η = 0) steps from x_t to 0 (the first is the loop's call)."""
        x0, eps = step.x0_hat.detach(), step.eps.detach()
        if self.ode_steps == 1 or step.t == 0:
            return x0
        if step.t + 1 <= self.ode_steps:
            grid = list(range(step.t, -1, -1))
        else:
            grid = [int(round(v)) for v in np.linspace(step.t, 0, self.ode_steps + 1)[:-1]]
        for s in grid[1:]:
            a = step.bc(step.diffusion.alpha_bar(step.t_batch(s)).to(x0.dtype))
            x = a.sqrt() * x0 + (1 - a).sqrt() * eps
            x0, eps = step.denoise(x, s)
            x0, eps = x0.detach(), eps.detach()
        return x0

    def step_size(self, step: Any, r2: torch.Tensor, tau2: float, physics: Any) -> torch.Tensor:
        """η_t per sample (N,) (see the class docstring)."""
        if self.lr == "auto":
            view = physics.spectral
            smax2 = float(view.singulars.max()) ** 2 if view is not None else (physics.jacobian_norm or 1.0) ** 2
            return 0.5 / (smax2 / tau2 + 1.0 / r2)
        total = step.diffusion.num_timesteps if step.diffusion is not None else 1
        ratio = step.i / (total + 1)      # the reference's step / (levels + 1) (its scheduler's num_steps)
        return torch.full_like(r2, self.lr * (1.0 + ratio * (self.lr_min_ratio - 1.0)))

    def langevin_draw(self, step: Any, x0_hat: torch.Tensor, y: torch.Tensor, physics: Any, r2: torch.Tensor,
                      tau2: float) -> torch.Tensor:
        """K Langevin steps on N(x; x0_hat, r² I) · N(y; A x, τ² I) from x0_hat."""
        eta = per_sample(self.step_size(step, r2, tau2, physics), x0_hat)
        r2b = per_sample(r2, x0_hat)
        x = x0_hat.clone()
        per_image = x0_hat[0].numel()
        chunk = max(1, min(self.langevin_steps, CHUNK_VALUES // per_image))
        noise, used = None, chunk
        for _ in range(self.langevin_steps):
            if used == chunk:
                noise = step.randn((chunk,) + tuple(x0_hat.shape[1:])).to(x.dtype)
                used = 0
            grad = physics.A_vjp(x, y - physics.A(x)).to(x.dtype) / tau2 - (x - x0_hat) / r2b
            x = x + eta * grad + (2 * eta).sqrt() * noise[:, used]
            used += 1
        return x

    def exact_draw(self, step: Any, x0_hat: torch.Tensor, y: torch.Tensor, physics: Any, r2: torch.Tensor,
                   tau2: float) -> torch.Tensor:
        """One exact draw of N(x; x0_hat, r² I) · N(y; A x, τ² I) by perturb-and-solve."""
        x_tilde = x0_hat + per_sample(r2.sqrt(), x0_hat) * step.randn().to(x0_hat.dtype)
        y_tilde = physics.A(x_tilde).to(x0_hat.dtype) + math.sqrt(tau2) * step.randn(tuple(y.shape[1:])).to(x0_hat.dtype)
        v = physics.cov_solve(y - y_tilde, r2, tau2)
        return x_tilde + per_sample(r2, x0_hat) * physics.A_T(v).to(x0_hat.dtype)

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One DAPS level: x_{t-1} (N, C, H, W)."""
        with torch.no_grad():
            dtype = compute_dtype(step.proposal)
            x0_hat = self.ode_x0(step).to(dtype)
            yy = y.detach().to(dtype)
            a = step.alpha_bar.detach().to(dtype)
            r2 = 1.0 / (a / (1.0 - a) + self.inv_var)
            tau = self.tau_value(physics)
            if self.langevin:
                x0 = self.langevin_draw(step, x0_hat, yy, physics, r2, max(tau, TAU_FLOOR) ** 2)
            else:
                x0 = self.exact_draw(step, x0_hat, yy, physics, r2, tau ** 2)
            step.residual = (yy - physics.A(x0).to(dtype)).flatten(1).norm(dim=1)
            a_prev = per_sample(step.alpha_bar_prev.detach().to(dtype), x0)
            x_prev = a_prev.sqrt() * x0 + (1.0 - a_prev).clamp(min=0).sqrt() * step.noise.to(dtype)
            return x_prev.to(step.proposal.dtype)
