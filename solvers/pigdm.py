"""ΠGDM, pseudoinverse-guided diffusion (Song, Vahdat, Mardani & Kautz, "Pseudoinverse-Guided
Diffusion Models for Inverse Problems", ICLR 2023), VP form: the likelihood score of a Gaussian
x_0 | x_t ~ N(x0_hat, r_t² I) with r_t² = 1 − ᾱ_t, pulled back through the network by one
vector-Jacobian product."""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from solvers.base import (Param, Solver, as_alpha_bar, as_score_weight, as_step, compute_dtype, per_sample,
                          register_solver)


@register_solver("PiGDM", "pgdm")
class PiGDM(Solver):
    """ΠGDM step (Song et al. 2023, §3: the pseudoinverse guidance), VP form:

        r_t² = 1 − ᾱ_t,     v = (r_t² A Aᵀ + σ_y² I)⁻¹ (y − A x0_hat)          (``cov_solve``)
        g    = (vᵀ A ∂x0_hat/∂x_t)ᵀ                                          (one VJP through the network)
        x_{t-1} = x' + ζ · w_t · g

    g approximates ∇_{x_t} log p(y | x_t) (ΠGDM's p(y | x_t) ≈ N(A x0_hat, r_t² A Aᵀ + σ_y² I),
    with the covariance held constant), and w_t is the sampler's weight that turns a likelihood
    score into the conditional-score proposal (``score_weight``: β_t/√α_t for DDPM, the DDIM
    weight for DDIM; derivation in :mod:`solvers.codps`): ζ = 1 is the same as replacing the
    network's ε̂ by ε̂ − √(1 − ᾱ_t) g, ΠGDM's guided score, on either sampler. (The authors'
    public implementation, NVlabs/RED-diff ``algos/pgdm.py``, scales the same direction by an
    extra ᾱ_t in the noiseless case; that corresponds to ζ = ᾱ_t here.)

    Parameters:
        scale (float >= 0, default 1.0): the guidance weight ζ.

    Call: ``x_next, residual = solver(x_t, x_prev, x0_hat, y, t, alpha_bar, score_weight=w)``
    (shapes as in :class:`solvers.base.Solver`); ``x_t`` must have ``requires_grad=True`` and
    ``x0_hat`` be computed from it with the graph kept (``needs_grad = True``); the sampler
    passes ``score_weight`` (``uses_score_weight = True``). Works on images (any registered
    operator's ``cov_solve``) as on vectors (the ``dense`` operator). The graph is freed.

    Raises:
        ValueError: (construction) an operator without forward/adjoint/cov_solve, a noiser
            without a real ``sigma >= 0``; (call) no graph from x_t to x0_hat, or no
            ``score_weight``.

    Example:
        >>> import torch
        >>> from operators import get_noise, get_operator
        >>> from solvers import get_solver
        >>> solver = get_solver("PiGDM", get_operator("noise"), get_noise("gaussian", sigma=0.05))
        >>> x_t = torch.zeros(2, 3, 8, 8, requires_grad=True)
        >>> x_next, res = solver(x_t, x_t.detach(), 2.0 * x_t, torch.ones(2, 3, 8, 8), 10,
        ...                      torch.tensor([0.5, 0.9]), score_weight=torch.tensor([0.1, 0.1]))
        >>> tuple(x_next.shape), tuple(res.shape)
        ((2, 3, 8, 8), (2,))
    """

    needs_grad = True
    uses_score_weight = True
    params = {"scale": Param(1.0, "nonneg", "guidance weight ζ (1 = the sampler's exact likelihood-score weight)")}

    def __init__(self, operator: Any, noiser: Any, **params: Any) -> None:
        super().__init__(operator, noiser, **params)
        missing = [m for m in ("forward", "adjoint", "cov_solve") if not callable(getattr(operator, m, None))]
        if missing:
            raise ValueError(f"solver 'PiGDM' needs an operator with {', '.join(missing)}; got "
                             f"{type(operator).__name__}")
        self.noise_sigma()

    def noise_sigma(self) -> float:
        """σ_y = ``noiser.sigma`` as a float. Raises ValueError unless a finite real >= 0."""
        sigma = getattr(self.noiser, "sigma", None)
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"solver 'PiGDM' needs a noiser with a real sigma >= 0, got {sigma!r}")
        return float(sigma)

    def guidance(self, x_t: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor,
                 alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g (N, C, H, W), residual (N,)) — the ΠGDM likelihood-score estimate and ||y − A x0_hat||;
        frees the graph. Raises ValueError without a graph from x_t to x0_hat."""
        if not x_t.requires_grad or not x0_hat.requires_grad:
            raise ValueError("PiGDM needs x_t with requires_grad=True and x0_hat computed from it with "
                             "the autograd graph kept (solver.needs_grad is True)")
        dtype = compute_dtype(x_t)
        with torch.no_grad():
            x0 = x0_hat.detach().to(dtype)
            diff = y.detach().to(dtype) - self.operator.forward(x0)
            r2 = 1.0 - as_alpha_bar(alpha_bar, x0.shape[0], dtype, x0.device)
            v = self.operator.cov_solve(diff, r2, self.noise_sigma() ** 2)
            direction = self.operator.adjoint(v).to(x0_hat.dtype)
        (g,) = torch.autograd.grad(x0_hat, x_t, grad_outputs=direction)
        return g.to(dtype), diff.flatten(1).norm(dim=1)

    def __call__(self, x_t: torch.Tensor, x_prev: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor,
                 t: int, alpha_bar: torch.Tensor, score_weight: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ΠGDM step; returns (x_{t-1} (N, C, H, W) detached, residual (N,))."""
        as_step(t)
        dtype = compute_dtype(x_prev)
        xp = x_prev.detach().to(dtype)
        w = per_sample(as_score_weight(score_weight, xp.shape[0], dtype, xp.device, "PiGDM"), xp)
        g, residual = self.guidance(x_t, x0_hat, y, alpha_bar)
        x_next = xp + self.scale * w * g.to(dtype)
        return x_next.to(x_prev.dtype), residual.detach()
