"""CoDPS and CoDPS+ ("Gaussian is All You Need: A Unified Framework for Solving Inverse Problems
via Diffusion Posterior Sampling", Yismaw, Kamilov & Asif, arXiv:2409.08906; code CSIPlab/CoDPS):
closed-form data-consistency steps with the covariance-corrected Gaussian likelihood
p(y | x_t) ≈ N(y; A μ, σ_n² I + r² A Aᵀ), which never differentiate through the network.

Both assume a Gaussian x_0 ~ N(x0_hat, λ⁻¹ I) around the Tweedie estimate, so that with
q(x_t | x_0) = N(√ᾱ x_0, (1 - ᾱ) I):

    r² = Var[x_0 | x_t] = 1 / (ᾱ / (1 - ᾱ) + λ)
    μ  = E[x_0 | x_t]   = r² (√ᾱ / (1 - ᾱ) · x_t + λ · x0_hat)
    ∂E[x_0 | x_t]/∂x_t  = J = √ᾱ / (λ (1 - ᾱ) + ᾱ)        (= 1/√ᾱ for λ = 0: Tweedie)

As in the paper's code the step is applied to, and μ is formed from, the sampler's proposal x'
(x'_{t-1} with ᾱ = ᾱ_t of the respaced process).

``scale: auto`` — the step weight that adds exactly the likelihood score. Both samplers'
proposals x' are functions of ε̂ = −√(1-ᾱ_t) ∇ log p_t(x_t). Sampling the posterior needs the
conditional score ∇ log p_t(x_t | y) = ∇ log p_t(x_t) + G, G = ∇_{x_t} log p(y | x_t), i.e. ε̂
replaced by ε̂ − √(1-ᾱ_t) G. Tweedie's x0_hat = (x_t − √(1-ᾱ_t) ε̂)/√ᾱ_t then moves by
(1-ᾱ_t)/√ᾱ_t · G and the proposal by w_t · G, with (α_t = ᾱ_t/ᾱ_{t-1}, β_t = 1 − α_t of the
respaced process):

    DDPM (Ho et al. 2020, eqs. 6-7: mean c1 x0_hat + c2 x_t, c1 = β_t √ᾱ_{t-1} / (1-ᾱ_t)):
        w_t = c1 (1-ᾱ_t)/√ᾱ_t = β_t / √α_t
    DDIM (Song et al. 2021, eq. 12: x' = √ᾱ_{t-1} x0_hat + √(1-ᾱ_{t-1}-σ_t²) ε̂ + σ_t z):
        w_t = √ᾱ_{t-1} (1-ᾱ_t)/√ᾱ_t − √((1-ᾱ_{t-1}-σ_t²)(1-ᾱ_t))
        (= β_t/√α_t for η = 1, where σ_t² = β_t (1-ᾱ_{t-1})/(1-ᾱ_t); (1-ᾱ_0)/√ᾱ_0 at t = 0)

The sampler computes w_t (``GaussianDiffusion.score_weight``); methods read it as ``step.weight``. Under CoDPS's Gaussian model, log p(y | x_t) ≈ log N(y; A E[x_0|x_t], C) with
E[x_0|x_t] = x0_hat and ∂E[x_0|x_t]/∂x_t = J I, so G = J Aᵀ C⁻¹ (y − A x0_hat) = J g, which is
exactly CoDPS+'s correction direction: with s = w_t the corrected proposal is the proposal of the
conditional score. For a Gaussian prior N(m, λ⁻¹ I) with ``inv_var`` = λ this is exact (the
model's E[x_0|x_t], r² and J are then the true ones), so CoDPS+ samples the true posterior up to
the sampler's discretisation error. CoDPS's direction r²√ᾱ/(1-ᾱ) Aᵀ C⁻¹ (y − A μ) is the
gradient of the same Gaussian log-likelihood (r²√ᾱ/(1-ᾱ) = J) evaluated at the proposal x'
(μ formed from x') instead of at x_t; it uses the same w_t. With ``auto`` the correction is also
applied at t = 0 (w_0 is the exact weight there) and ``t_div`` / ``div_ratio`` are not used.

**Nonlinear A (linearised CoDPS / CoDPS+; docs/methods.md "Nonlinear measurements").** For a
differentiable A that is not linear, A is replaced by its first-order expansion at the point
where it is evaluated, A(x) ≈ A(x̄) + J (x − x̄), J = J_A(x̄) (x̄ = x0_hat for CoDPS+, μ for CoDPS).
The Gaussian model x_0 ~ N(x̄, r² I) then gives y ~ N(A(x̄), C) with

    C = σ_n² I + r² J Jᵀ,      g = Jᵀ C⁻¹ (y − A(x̄)),

the same formulas with A Aᵀ → J Jᵀ and Aᵀ → Jᵀ, the residual kept nonlinear. C is SPD
(σ_n > 0, floored at 1e-5 for CoDPS+), so C⁻¹ is solved by conjugate gradients using only the
products J u (JVP) and Jᵀ v (VJP) of the operator (``physics.linearize``); the network is never
differentiated, only the cheap A. For a linear A, J = A and ``linearize`` returns the physics
itself: the step is exactly the linear one.
"""
from __future__ import annotations

from typing import Any

import torch

from solvers.base import Param, Solver, check_sigma, compute_dtype, per_sample, register_solver

#: CoDPS+ floors σ_n at this value so that C stays invertible for noiseless measurements
#: (numerical guard of the reference code, not a tuning constant).
SIGMA_FLOOR = 1e-5

_PARAMS = {
    "scale": Param(1.0, "nonneg_or_auto", "step size s of the data-consistency update, or 'auto': the "
                   "sampler's exact likelihood-score weight w_t"),
    "t_div": Param(0.0, "nonneg", "for steps t < t_div the scale is divided by div_ratio"),
    "div_ratio": Param(1.0, "positive", "divisor of the scale for t < t_div"),
    "inv_var": Param(1.0, "nonneg", "λ, precision of the Gaussian x_0 ~ N(x0_hat, λ⁻¹ I)"),
    "use_A_AT": Param(True, "bool", "use C = σ_n² I + r² A Aᵀ (else the paper's diagonal variants)"),
}


class _GaussianLikelihood(Solver):
    """Shared parameters and helpers of CoDPS and CoDPS+ (not registered).

    Parameters (keyword, paper code's names):
        scale (float >= 0 or "auto", default 1.0): step size s; "auto" uses the sampler's
            weight w_t (module docstring), ``step.weight``.
        t_div (float >= 0, default 0): for t < t_div the step size is s / div_ratio.
        div_ratio (float > 0, default 1.0): see t_div.
        inv_var (float >= 0, default 1.0): λ.
        use_A_AT (bool, default True): covariance C = σ_n² I + r² A Aᵀ through
            ``physics.cov_solve``; False keeps the paper's simpler C = (σ_n² + r²) I.

    Raises:
        ValueError: (construction) bad parameters; (``check``) no physics or a noise model
            without a real ``sigma >= 0``.
    """

    needs_grad = False
    needs_linear = False       # a nonlinear A is linearised (physics.linearize): see the module docstring
    params = _PARAMS

    def check(self, physics: Any) -> None:
        """Needs a physics whose noise model has a real σ_n >= 0."""
        super().check(physics)
        check_sigma(physics, self.name)

    def scale_at(self, t: int) -> float:
        """Step size at step t: ``scale / div_ratio`` if t < t_div, else ``scale`` (a number;
        ValueError for ``scale: auto``, see :meth:`step_weight`)."""
        if self.scale == "auto":
            raise ValueError(f"solver {self.name!r}: scale is 'auto'; the weight comes from the sampler")
        return self.scale / self.div_ratio if t < self.t_div else self.scale

    def step_weight(self, step: Any, like: torch.Tensor) -> float | torch.Tensor:
        """The step size of this step: :meth:`scale_at` for a number, or the sampler's w_t
        (``step.weight``) as an (N, 1, ..., 1) tensor broadcasting over ``like`` for ``scale: auto``."""
        if self.scale != "auto":
            return self.scale_at(step.t)
        return per_sample(step.weight.to(device=like.device, dtype=like.dtype), like)

    def posterior_var(self, a: torch.Tensor) -> torch.Tensor:
        """r² = 1 / (ᾱ / (1 - ᾱ) + λ), same shape as ``a`` (ᾱ)."""
        return 1.0 / (a / (1.0 - a) + self.inv_var)

    def cov_inverse(self, physics: Any, v: torch.Tensor, r2: torch.Tensor, sigma2: float) -> torch.Tensor:
        """C⁻¹ v in measurement space: ``physics.cov_solve(v, r2, sigma2)`` = (σ_n² I + r² A Aᵀ)⁻¹ v
        if ``use_A_AT``, else v / (σ_n² + r²). v: measurement-shaped (N, ...); r2: (N,)."""
        if self.use_A_AT:
            return physics.cov_solve(v, r2, sigma2)
        return v / per_sample(sigma2 + r2, v)


@register_solver("CoDPS")
class CoDPS(_GaussianLikelihood):
    """CoDPS, the DDPM variant ("Gaussian is All You Need", CoDPS algorithm; reference code
    ``condition_methods.py``, method ``CoDPS``).

    With x' the sampler's proposal x'_{t-1}, ᾱ = ᾱ_t, s the step size (``scale``, divided by
    ``div_ratio`` when t < t_div), σ_n = ``physics.sigma_n`` and λ = ``inv_var``:

        r² = 1 / (ᾱ/(1-ᾱ) + λ)
        μ  = r² (√ᾱ/(1-ᾱ) · x' + λ · x0_hat)
        ℓ  = ½ (y - Aμ)ᵀ C⁻¹ (y - Aμ),      C = σ_n² I + r² A Aᵀ
        x_{t-1} = x' - s ∂ℓ/∂x'  (x0_hat held constant)
                = x' + s · r² √ᾱ/(1-ᾱ) · Aᵀ C⁻¹ (y - Aμ)

    With ``use_A_AT=False``, C = (σ_n² + r²) I for every operator, i.e.
    ℓ = ½ Σ (y - Aμ)² / (σ_n² + r²) (the ½ of the reference code, for inpainting as for the
    others); the update above is the exact gradient of that ℓ. σ_n is not floored: with
    σ_n = 0 and ``use_A_AT`` the physics' ``cov_solve`` must cope with a singular A Aᵀ.

    Reads ``step.proposal``, ``step.x0_hat``, ``step.alpha_bar`` (and ``step.weight`` for
    ``scale: auto``); runs under ``torch.inference_mode()`` and builds no autograd graph.

    Example:
        >>> import torch
        >>> from operators import Physics, get_noise, get_operator
        >>> from sampling import make_step
        >>> from solvers import get_solver
        >>> phys = Physics(get_operator("noise"), get_noise("gaussian", sigma=0.05))
        >>> x = torch.zeros(2, 3, 8, 8)
        >>> step = make_step(x, x, x, 10, torch.tensor([0.5, 0.9]))
        >>> get_solver("CoDPS", scale=1.0).step(step, torch.ones(2, 3, 8, 8), phys).shape
        torch.Size([2, 3, 8, 8])
    """

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One CoDPS step: x_{t-1} (N, C, H, W)."""
        with torch.no_grad():
            x_prev = step.proposal
            dtype = compute_dtype(x_prev)
            xp = x_prev.detach().to(dtype)
            x0 = step.x0_hat.detach().to(dtype)
            a = per_sample(step.alpha_bar.to(device=xp.device, dtype=dtype), xp)   # (N,1,1,1)
            sigma2 = physics.sigma_n ** 2
            r2 = self.posterior_var(a)
            coef = a.sqrt() / (1.0 - a)
            mu = r2 * (coef * xp + self.inv_var * x0)
            lin = physics.linearize(mu)          # itself for a linear A; else J_A(μ) with CG solves
            w = self.cov_inverse(lin, y.detach().to(dtype) - physics.A(mu), r2.flatten(), sigma2)
            x_next = xp + self.step_weight(step, xp) * r2 * coef * lin.A_T(w).to(dtype)
            return x_next.to(x_prev.dtype)


@register_solver("CoDPS+", "codps_plus")
class CoDPSPlus(_GaussianLikelihood):
    """CoDPS+, the DDIM variant ("Gaussian is All You Need", CoDPS+; reference code
    ``condition_methods.py``, method ``CoDPS+``).

    With x' the sampler's proposal x'_{t-1}, ᾱ = ᾱ_t, s the step size (``scale``, divided by
    ``div_ratio`` when t < t_div), σ_n = max(``physics.sigma_n``, 1e-5) and λ = ``inv_var``:

        r² = 1 / (ᾱ/(1-ᾱ) + λ),           C = σ_n² I + r² A Aᵀ
        g  = Aᵀ C⁻¹ (y - A x0_hat)         (= -∂/∂x0_hat of ½ (y - A x0_hat)ᵀ C⁻¹ (y - A x0_hat))
        J  = 1/√ᾱ if λ = 0 else √ᾱ / (λ(1-ᾱ) + ᾱ)     (∂E[x_0|x_t]/∂x_t of the Gaussian model)
        x_{t-1} = x' + s · J · g

    and no correction at t = 0 (x_{t-1} = x') unless ``scale: auto`` (then s = w_t, the
    sampler's weight, and the step is applied at every t; see the module docstring for why
    J · g is the likelihood score). With ``use_A_AT=False``: C = (σ_n² + r²) I, except for
    pixel-masking operators (``physics.is_pixel_mask``: inpainting) where g = Aᵀ (y - A x0_hat),
    the gradient of ½ ||y - A x0_hat||², as in the reference code.

    Reads ``step.proposal``, ``step.x0_hat``, ``step.alpha_bar``, ``step.t`` (and ``step.weight``
    for ``scale: auto``); runs under ``torch.inference_mode()`` and builds no autograd graph.
    """

    def cov_inverse(self, physics: Any, v: torch.Tensor, r2: torch.Tensor, sigma2: float) -> torch.Tensor:
        """As :meth:`_GaussianLikelihood.cov_inverse`, but the identity for pixel-masking
        operators when ``use_A_AT`` is False."""
        if not self.use_A_AT and physics.is_pixel_mask:
            return v
        return super().cov_inverse(physics, v, r2, sigma2)

    def jacobian(self, a: torch.Tensor) -> torch.Tensor:
        """J(ᾱ) = 1/√ᾱ if λ = 0, else √ᾱ / (λ(1-ᾱ) + ᾱ); same shape as ``a``."""
        if self.inv_var == 0:
            return 1.0 / a.sqrt()
        return a.sqrt() / (self.inv_var * (1.0 - a) + a)

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One CoDPS+ step: x_{t-1} (N, C, H, W); sets ``step.residual``."""
        with torch.no_grad():
            x_prev = step.proposal
            dtype = compute_dtype(x_prev)
            x0 = step.x0_hat.detach().to(dtype)
            diff = y.detach().to(dtype) - physics.A(x0)    # y − A x0_hat: residual and update
            step.residual = diff.flatten(1).norm(dim=1)
            if step.t == 0 and self.scale != "auto":
                return x_prev.detach()
            xp = x_prev.detach().to(dtype)
            a = per_sample(step.alpha_bar.to(device=xp.device, dtype=dtype), xp)   # (N,1,1,1)
            sigma2 = max(physics.sigma_n, SIGMA_FLOOR) ** 2
            r2 = self.posterior_var(a)
            lin = physics.linearize(x0)          # itself for a linear A; else J_A(x0_hat) with CG solves
            w = self.cov_inverse(lin, diff, r2.flatten(), sigma2)
            x_next = xp + self.step_weight(step, xp) * self.jacobian(a) * lin.A_T(w).to(dtype)
            return x_next.to(x_prev.dtype)
