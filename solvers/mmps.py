"""MMPS, moment matching posterior sampling (Rozet, Andry, Lanusse & Louppe, "Learning Diffusion
Priors from Observations by Expectation Maximization", NeurIPS 2024, §3.3 and Appendix; code
francois-rozet/diffusion-priors and the ``azula`` library's ``MMPSDenoiser``): the likelihood
p(y | x_t) of the Gaussian projection of p(x_0 | x_t) with Tweedie's *full* covariance, solved by
a few Krylov (GMRES) iterations, each one vector-Jacobian product through the network."""
from __future__ import annotations

from typing import Any

import torch

from operators.krylov import gmres
from solvers.base import Param, compute_dtype, register_solver
from solvers.pigdm import PiGDM


@register_solver("MMPS", "mmps")
class MMPS(PiGDM):
    """MMPS step (Rozet et al. 2024, eqs. 11-13), VP form, on the loop's sampler. The update
    x_{t-1} = x' + ζ w_t g is ΠGDM's (:meth:`PiGDM.step`, inherited); only the likelihood-score
    estimate g (:meth:`guidance`) differs.

    Tweedie's moments of p(x_0 | x_t): the mean x0_hat and the covariance, used in full,

        Cov[x_0 | x_t] = (1−ᾱ_t)/√ᾱ_t · J,     J = ∂x0_hat/∂x_t   (applied as a VJP: v ↦ Jᵀ v),

    so p(y | x_t) ≈ N(y; A x0_hat, C_y), C_y = σ_n² I + (1−ᾱ_t)/√ᾱ_t · A Jᵀ Aᵀ, and

        v = C_y⁻¹ (y − A x0_hat)            (k GMRES iterations from 0: k VJPs, never C_y itself)
        g = Jᵀ Aᵀ v                         (one more VJP)
        x_{t-1} = x' + ζ · w_t · g

    with w_t the sampler's likelihood-score weight (``step.weight``; ζ = 1 is the paper's
    posterior score ∇ log p_t(x_t) + g on either sampler). azula's ``MMPSDenoiser`` returns the
    posterior mean x0_hat + (1−ᾱ)/√ᾱ · g, the same quantity (tests/test_ref_tmpd_mmps.py).

    The solver: with this repository's MNIST prior A Jᵀ Aᵀ is far from symmetric and indefinite
    at high noise (‖M − Mᵀ‖/‖M‖ = 0.81–1.23 at x_T, 14–75 % eigenvalues with negative real part;
    benchmarks/results/jacobian_stats.csv), where the
    conjugate gradients the paper's first version used have no guarantee and diverge. GMRES
    (:func:`operators.krylov.gmres`, as azula's default ``solver="gmres"``) minimises
    ||b − C_y v|| over the Krylov space for any square C_y: the residual never grows with k, and
    the k-th iterate is a bounded polynomial in C_y applied to b. k = 1 is azula's default
    (v = (bᵀ C_y b / ||C_y b||²) b, a scalar step along the residual).

    Against the other members of the covariance family (docs/benchmarks.md): ΠGDM takes
    Cov = (1−ᾱ) I, CoDPS r² I from a Gaussian model (no backprop), TMPD the Jacobian's row-sum
    diagonal (2 VJPs), TMPD-exact the full A J Aᵀ (m + 1 VJPs), MMPS the full one by k VJPs.
    On a single Gaussian prior with the exact denoiser (J symmetric) and k >= m, MMPS is exact:
    g = ∇_{x_t} log p(y | x_t) (tests/test_mmps.py).

    Parameters:
        scale (float >= 0, default 1.0): ζ.
        iterations (integer >= 1, default 1): k, the GMRES iterations (= VJPs in the solve).

    Cost per step: 1 network call and k + 1 VJPs (:attr:`vjps`).

    Reads ``step.x_t`` (requires grad), ``step.x0_hat`` (graph kept: ``needs_grad = True``),
    ``step.alpha_bar``, ``step.weight``, ``step.proposal``; frees the graph; sets ``step.residual``.

    Raises:
        ValueError: (construction) ``iterations`` not an integer >= 1; (check) a noise model
            without a real sigma >= 0; (step) no graph from x_t to x0_hat.
    """

    needs_grad = True
    params = {
        "scale": Param(1.0, "nonneg", "guidance weight ζ (1 = the sampler's exact likelihood-score weight)"),
        "iterations": Param(1.0, "positive", "GMRES iterations k per step (an integer; k VJPs, plus one for the score)"),
    }
    #: vector-Jacobian products of the last :meth:`guidance` call, per image (cost accounting).
    vjps: int = 0

    def __init__(self, **params: Any) -> None:
        """As :class:`solvers.base.Solver`; ``iterations`` must be an integer >= 1 (ValueError)."""
        super().__init__(**params)
        if self.iterations != int(self.iterations):
            raise ValueError(f"solver 'MMPS' parameter 'iterations' must be an integer >= 1, got {self.iterations!r}")
        self.iterations = int(self.iterations)

    def guidance(self, x_t: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor, alpha_bar: torch.Tensor,
                 physics: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(g (N, C, H, W), ||y − A x0_hat|| (N,)); frees the graph. Raises ValueError without a
        graph from x_t to x0_hat."""
        vjp = self.network_vjp(x_t, x0_hat)            # checks the graph
        dtype = compute_dtype(x_t)

        with torch.no_grad():
            x0 = x0_hat.detach().to(dtype)
            resid = y.detach().to(dtype) - physics.A(x0).to(dtype)
            ab = alpha_bar.to(device=x0.device, dtype=dtype)
            ratio = ((1.0 - ab) / ab.sqrt()).reshape(-1, *([1] * (resid.dim() - 1)))
            sigma2 = float(physics.sigma_n) ** 2
            lin = physics.linearize(x0)     # itself for a linear A; else A linearised at x0_hat (J_A by JVP / VJP)

        def cov_y(v: torch.Tensor) -> torch.Tensor:            # σ² v + (1−ᾱ)/√ᾱ · A Jᵀ Aᵀ v
            u = vjp(lin.A_T(v.to(dtype)).to(dtype), True)
            with torch.no_grad():
                return sigma2 * v.to(dtype) + ratio * lin.A(u).to(dtype)

        v = gmres(cov_y, resid, self.iterations)
        g = vjp(lin.A_T(v).to(dtype), False)
        self.vjps = self.iterations + 1
        return g, resid.flatten(1).norm(dim=1)
