"""DDRM, Denoising Diffusion Restoration Models (Kawar, Elad, Ermon & Song, NeurIPS 2022,
arXiv:2201.11793; reference code bahjat-kawar/ddrm ``functions/denoising.py``,
``efficient_generalized_steps``): a diffusion run in the spectral domain of A = U Σ Vᵀ, where
each coefficient is denoised by the network, replaced by the measurement, or interpolated between
the two depending on whether the measurement noise in that coefficient is below the diffusion
noise level. No gradient through the network: one network call per step."""
from __future__ import annotations

from typing import Any

import torch

from solvers.base import Param, Solver, check_sigma, compute_dtype, per_sample, register_solver


@register_solver("DDRM")
class DDRM(Solver):
    """DDRM step (Kawar et al. 2022, §4.2, the variational conditionals of eqs. 7–8 (numbering of
    arXiv:2201.11793v3 as we read it; the formulas follow the reference code), in the
    "efficient" form of the reference code, started from the sampler's x_T).

    Checked against the reference code (bahjat-kawar/ddrm ``efficient_generalized_steps`` @
    32b6b3c; tests/test_ref_ddrm.py, 1e-5, with ``sv_zero: 0`` and unclipped x0_hat). Deliberate
    differences: the reference starts from an x_T built from y (its p(x_T | x_0, y)), ours from the
    sampler's x_T; x0_hat is clipped when the diffusion config clips; small singular values are
    null space below ``sv_zero`` here, zeroed at 3e-2 but kept as measured there; at σ_y = 0 the
    last step takes ȳ here, x̄_θ there (its strict inequalities).

    DDRM works in the variance-exploding view of the VP process: x̃_t = x_t / √ᾱ_t = x_0 + σ_t ε
    with σ_t = √(1 − ᾱ_t) / √ᾱ_t, so the same formulas hold at any respacing (σ_{t-1} from
    ``step.alpha_bar_prev``; σ_{t-1} = 0 at the last step). In the spectral coefficients
    (``physics.spectral``: x̄ = Vᵀ x̃, singular values s_i, ȳ_i = (Uᵀ y)_i / s_i for s_i > 0),
    with x̄_θ = Vᵀ x0_hat, ε̄ = Vᵀ ε̂ (= (x̄_t − x̄_θ)/σ_t), ε fresh N(0, I) noise and σ_y = σ_n:

        s_i = 0              :  x̄_{t-1} = x̄_θ + √(1−η²) σ_{t-1} ε̄ + η σ_{t-1} ε
        s_i σ_{t-1} < σ_y    :  x̄_{t-1} = x̄_θ + √(1−η²) σ_{t-1} (ȳ − x̄_θ) / (σ_y / s_i) + η σ_{t-1} ε
        s_i σ_{t-1} ≥ σ_y    :  x̄_{t-1} = (1 − η_b) x̄_θ + η_b ȳ + √(σ_{t-1}² − η_b² σ_y² / s_i²) ε

        x_{t-1} = √ᾱ_{t-1} V x̄_{t-1}

    The first line is the unconditional DDIM-like step in A's null space (missing pixels,
    frequencies the blur removes, the aliases super-resolution loses); the second keeps the
    coefficients whose measurement is noisier than the diffusion (always at the end of sampling
    when σ_y > 0); the third takes the measurement where it is more precise. With σ_y = 0 every
    coefficient with s_i > 0 is in the third case, also at the last step (σ_{t-1} = 0 ≥ 0), so
    with η_b = 1 the final sample satisfies A x_0 = y exactly. The square-root argument is clamped
    at 0 (η_b > 1). The fresh noise ε is the sampler's per-image noise ``step.noise`` read in
    coefficient layout (V is orthonormal, so white noise stays white); the sampler's own
    proposal and η are not used.

    Parameters (paper defaults, §5):
        eta (float in [0, 1], default 0.85): η (``etaA`` = ``etaC`` of the reference code).
        eta_b (float >= 0, default 1.0): η_b (``etaB``).
        sv_zero (float >= 0 or "auto", default "auto" = σ_n / 2, i.e. σ_n on the [0, 1] image
            scale, so 0 for noise-free measurements): singular values s_i <= sv_zero are treated as 0, i.e.
            their coefficients follow the null-space line and ignore y (the reference code's
            ``ZERO = 3e-2`` in ``svd_replacement.Deblurring``, applied there to the 1-D factors of
            a separable blur; deepinv's DDRM uses s_i <= σ_n on the [0, 1] scale, our "auto"). With 0, every
            s_i > 0 is measured: for s_i far below σ_y the "noisy" line then injects the fixed
            measurement-noise pattern (ȳ − x̄_θ)/(σ_y/s_i) ≈ n_i/σ_y as its ε̄ at every step;
            on MNIST Gaussian deblurring (|K̂| down to 1e-9) at η = 0.85 that cost 0.6 dB (tune
            digits, ddim100) and 2.4 dB on a grid dense at low noise (docs/methods.md). With η = 1
            the cutoff changes nothing (the noisy and null-space lines then coincide).

    Needs ``physics.spectral`` (circular blur, super-resolution, inpainting, identity, dense, or a
    small image's dense SVD) and a Gaussian σ_n >= 0; ``check`` refuses otherwise.

    Example:
        >>> import torch
        >>> from operators import Physics, get_noise, get_operator
        >>> from sampling import make_step
        >>> from solvers import get_solver
        >>> phys = Physics(get_operator("inpainting", mask_type="random", mask_prob_range=(0.5, 0.5)),
        ...                get_noise("clean"))
        >>> from util.seeding import numpy_rngs
        >>> x = torch.rand(1, 1, 8, 8) * 2 - 1
        >>> y = phys.measure(x, numpy_rngs(0, [0], 1))
        >>> step = make_step(torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x), 0, 0.99)
        >>> out = get_solver("DDRM").step(step, y, phys)      # last step, noiseless: A x = y
        >>> bool(torch.allclose(phys.A(out), y, atol=1e-6))
        True
    """

    needs_grad = False
    params = {"eta": Param(0.85, "nonneg", "η: noise of the unconditional / noisy-measurement coefficients"),
              "eta_b": Param(1.0, "nonneg", "η_b: weight of the measurement where it is more precise than the diffusion"),
              "sv_zero": Param("auto", "nonneg_or_auto", "singular values s_i <= sv_zero are treated as 0 (null space); auto: σ_n / 2")}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.eta > 1.0:
            raise ValueError(f"solver {self.name!r} parameter 'eta' must be <= 1, got {self.eta!r}")

    def cutoff(self, physics: Any) -> float:
        """The singular-value cutoff: ``sv_zero``, or σ_n / 2 for ``"auto"`` (σ_n on the [0, 1]
        image scale: deepinv's rule)."""
        return 0.5 * float(physics.sigma_n) if self.sv_zero == "auto" else float(self.sv_zero)

    def check(self, physics: Any) -> None:
        """Needs a spectral view and a noise model with a real σ_n >= 0."""
        super().check(physics)
        check_sigma(physics, self.name)
        if physics.spectral is None:
            raise ValueError(f"solver {self.name!r} needs an operator with a spectral view (SVD); "
                             f"{physics.name} has none for this image size")

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One DDRM step: x_{t-1} (N, C, H, W)."""
        with torch.no_grad():
            view = physics.spectral
            dtype = compute_dtype(step.proposal)
            x0c = view.V_T(step.x0_hat.detach().to(dtype))
            epsc = view.V_T(step.eps.detach().to(dtype))
            noise = step.noise.detach().to(dtype).reshape(x0c.shape)
            s = view.sing(x0c)
            uy = view.U_T(y.detach().to(dtype))
            pos = s > self.cutoff(physics)                                       # s_i <= sv_zero: null space
            s_safe = torch.where(pos, s, torch.ones_like(s))
            ybar = torch.where(pos, uy / s_safe, torch.zeros_like(uy))
            a_prev = per_sample(step.alpha_bar_prev.to(device=x0c.device, dtype=dtype), x0c)
            sig = ((1.0 - a_prev).clamp(min=0) / a_prev).sqrt()           # σ_{t-1}, VE scale
            sy = float(physics.sigma_n)
            eta, eta_b = self.eta, self.eta_b
            keep = (1.0 - eta ** 2) ** 0.5
            null = x0c + keep * sig * epsc + eta * sig * noise
            # σ_y / s_i, inf on the null space (never "more precise")
            sy_over_s = torch.where(pos, sy / s_safe, torch.full_like(s, float("inf")))
            noisy = x0c + keep * sig * (ybar - x0c) / torch.where(pos & (sy > 0), sy_over_s,
                                                                   torch.ones_like(s)) + eta * sig * noise
            precise_std = (sig ** 2 - (eta_b * torch.where(pos, sy_over_s, torch.zeros_like(s))) ** 2).clamp(min=0).sqrt()
            precise = (1.0 - eta_b) * x0c + eta_b * ybar + precise_std * noise
            is_precise = pos & (s * sig >= sy)
            is_noisy = pos & ~is_precise
            coef = torch.where(is_precise, precise, torch.where(is_noisy, noisy, null))
            x_prev = per_sample(step.alpha_bar_prev.to(device=x0c.device, dtype=dtype), step.x0_hat).sqrt() \
                * view.V(coef)
            return x_prev.to(step.proposal.dtype)
