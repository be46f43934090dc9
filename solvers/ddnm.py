"""DDNM+, the noise-aware Denoising Diffusion Null-space Model (Wang, Yu & Zhang, "Zero-Shot
Image Restoration Using Denoising Diffusion Null-Space Model", ICLR 2023, arXiv:2212.00490;
reference code wyhuai/DDNM ``functions/svd_ddnm.py``, ``ddnm_plus_diffusion``, and the
``Lambda`` / ``Lambda_noise`` operators of ``functions/svd_operators.py``): the range-space part of
the Tweedie estimate is replaced by the measurement's (A⁺ y), scaled per singular value so that
the measurement noise carried into x_{t-1} never exceeds the noise the step adds. No gradient
through the network: one network call per step. The "time-travel" trick (RePaint-style
back-and-forth resampling) is not implemented: it multiplies the NFE per step."""
from __future__ import annotations

from typing import Any

import torch

from solvers.base import Param, compute_dtype, per_sample, register_solver
from solvers.ddrm import DDRM


@register_solver("DDNM", "DDNM+")
class DDNM(DDRM):
    """DDNM+ step (Wang et al. 2023, §3.3 eqs. 17–19 and appendix eq. 51, in the SVD form of the
    reference code), DDIM-style with the DDNM η.

    With x0_hat the Tweedie estimate (eq. 12), a = √ᾱ_{t-1}, σ = √(1 − ᾱ_{t-1}) (the std the step
    adds), σ_y = σ_n, the spectral view A = U Σ Vᵀ and, per coefficient i with singular value
    s_i > 0:

        λ_i = 1                                 if σ ≥ a σ_y / s_i      (or σ_y = 0)
        λ_i = s_i σ √(1 − η²) / (a σ_y)         otherwise

        x̂0 = x0_hat − V Λ Vᵀ A⁺ (A x0_hat − y)                                     (eq. 17)
        x_{t-1} = a x̂0 + V (d₁ ∘ Vᵀ z + d₂ ∘ Vᵀ ε̂)                                (eq. 51)

    with z fresh N(0, I) noise, ε̂ the network's noise estimate, and per coefficient

        s_i = 0 or σ_y = 0        :  d₁ = η σ,                        d₂ = √(1 − η²) σ
        σ ≥  a σ_y / s_i          :  d₁ = √(σ² − a² σ_y² / s_i²),     d₂ = 0
        σ <  a σ_y / s_i          :  d₁ = η σ,                        d₂ = 0

    so every coefficient of x_{t-1} carries noise of variance σ²: the measurement's a λ_i σ_y / s_i
    plus the added d₁ (and d₂ for the unconditional part). (At σ = a σ_y / s_i exactly, the
    reference code keeps d₁ = ησ and d₂ = √(1 − η²)σ; we use the √ branch there, which keeps the
    variance at σ².) At the last step (a = 1, σ = 0) with σ_y > 0, λ = 0: x_0 = x0_hat. A⁺ = V Σ⁺ Uᵀ (``physics.A_pinv``: zero singular values give 0, so the null
    space keeps x0_hat: the "null-space" of the name). With σ_y = 0, λ = 1 everywhere and x̂0 =
    A⁺ y + (I − A⁺A) x0_hat (DDNM, eq. 13), so at the last step (a = 1, σ = 0) A x_0 = y exactly.
    z is the sampler's per-image noise ``step.noise``; the sampler's proposal and η are not used.

    Parameters:
        eta (float in [0, 1], default 0.85): η of the reference code's DDIM-style update (its
            ``--eta`` default, the value used in the paper's experiments).
        sv_zero (float >= 0 or "auto", default "auto" = σ_n / 2): singular values s_i <= sv_zero are
            treated as 0 (null space: x0_hat kept, y ignored there), as DDRM's ``sv_zero``.

    Checked against the reference code (wyhuai/DDNM ``ddnm_plus_diffusion`` @ 00b58ea with its
    ``Inpainting`` operator; tests/test_ref_ddnm.py, 1e-5, ``sv_zero: 0``, unclipped x0_hat).
    Its ``SuperResolution`` / ``Deblurring`` operators scale ε̂ in pixel coordinates inside
    ``Lambda_noise`` (no Vᵀ); ours takes Vᵀ ε̂ as eq. 51 (the same for inpainting).

    Needs ``physics.spectral`` and a Gaussian σ_n >= 0; ``check`` refuses otherwise (both, and
    η ≤ 1, inherited from :class:`DDRM`, whose update this is with η_b = 1 when σ_n > 0).
    """

    needs_grad = False
    params = {"eta": Param(0.85, "nonneg", "η: share of fresh noise in the added noise (≤ 1)"),
              "sv_zero": Param("auto", "nonneg_or_auto", "singular values s_i <= sv_zero are treated as 0 (null space); auto: σ_n / 2")}

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One DDNM+ step: x_{t-1} (N, C, H, W); sets ``step.residual``."""
        with torch.no_grad():
            view = physics.spectral
            dtype = compute_dtype(step.proposal)
            x0 = step.x0_hat.detach().to(dtype)
            diff = physics.A(x0) - y.detach().to(dtype)                     # A x0_hat − y
            step.residual = diff.flatten(1).norm(dim=1)
            corr = view.U_T(diff)                                           # Uᵀ (A x0_hat − y)
            s = view.sing(corr)
            pos = s > self.cutoff(physics)                                         # s_i <= sv_zero: null space
            s_safe = torch.where(pos, s, torch.ones_like(s))
            a = per_sample(step.alpha_bar_prev.to(device=corr.device, dtype=dtype), corr).sqrt()
            sig = (1.0 - a ** 2).clamp(min=0).sqrt()
            sy, eta = float(physics.sigma_n), self.eta
            keep = (1.0 - eta ** 2) ** 0.5
            one = torch.ones_like(s * a)
            if sy > 0:
                budget = a * sy / s_safe                                     # a σ_y / s_i
                small = pos & (sig < budget)                                 # measurement noise too large
                lam = torch.where(small, s_safe * sig * keep / (a.clamp(min=1e-12) * sy), one)
                d1 = torch.where(small, eta * sig * one,
                                 (sig ** 2 - budget ** 2).clamp(min=0).sqrt())
                d2 = torch.zeros_like(d1)
                d1 = torch.where(pos, d1, eta * sig * one)
                d2 = torch.where(pos, d2, keep * sig * one)
            else:
                lam, d1, d2 = one, eta * sig * one, keep * sig * one
            x0_new = x0 - view.V(torch.where(pos, lam * corr / s_safe, torch.zeros_like(corr)))
            z = view.V_T(step.noise.detach().to(dtype))
            e = view.V_T(step.eps.detach().to(dtype))
            x_prev = per_sample(a.flatten(), x0) * x0_new + view.V(d1 * z + d2 * e)
            return x_prev.to(step.proposal.dtype)
