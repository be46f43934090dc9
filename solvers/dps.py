"""DPS, Diffusion Posterior Sampling (Chung, Kim, Mccann, Klasky & Ye, "Diffusion Posterior
Sampling for General Noisy Inverse Problems", ICLR 2023): the baseline data-consistency step that
differentiates the measurement residual through the network."""
from __future__ import annotations

import torch

from solvers.base import Param, Solver, as_step, compute_dtype, register_solver


@register_solver("DPS", "ps")
class DPS(Solver):
    """DPS step (Chung et al. 2023, Algorithm 1 "DPS - Gaussian", line 7), with the norm
    instead of the squared norm as in the authors' code:

        x_{t-1} = x' - ζ ∇_{x_t} ||y - A x0_hat(x_t)||_2,      ζ = ``scale``

    computed per sample (the gradient of the batch sum of per-sample norms, so samples do not
    interact).

    Parameters:
        scale (float >= 0, default 1.0): ζ.

    Call: ``x_next, residual = solver(x_t, x_prev, x0_hat, y, t, alpha_bar)`` (shapes as in
    :class:`solvers.base.Solver`); ``x_t`` must have ``requires_grad=True`` and ``x0_hat`` be
    computed from it with the graph kept (``needs_grad = True``); ``t`` and ``alpha_bar`` are
    not used. The graph is freed by the call.

    Raises:
        ValueError: (call) ``x_t`` does not require grad or ``x0_hat`` carries no graph.
    """

    needs_grad = True
    params = {"scale": Param(1.0, "nonneg", "ζ, step size of the gradient step")}

    def __init__(self, operator, noiser, **params) -> None:
        super().__init__(operator, noiser, **params)
        if not callable(getattr(operator, "forward", None)):
            raise ValueError(f"solver 'DPS' needs an operator with forward; got {type(operator).__name__}")

    def __call__(self, x_t: torch.Tensor, x_prev: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor,
                 t: int, alpha_bar: torch.Tensor, score_weight: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DPS step; returns (x_{t-1} (N, C, H, W) detached, residual (N,)); ``score_weight``
        is not used."""
        as_step(t)
        if not x_t.requires_grad or not x0_hat.requires_grad:
            raise ValueError("DPS needs x_t with requires_grad=True and x0_hat computed from it with "
                             "the autograd graph kept (solver.needs_grad is True)")
        dtype = compute_dtype(x_prev)
        diff = y.detach().to(dtype) - self.operator.forward(x0_hat.to(dtype))
        norm = diff.flatten(1).norm(dim=1)                       # (N,) ||y - A x0_hat||_2
        (grad,) = torch.autograd.grad(norm.sum(), x_t)
        x_next = x_prev.detach().to(dtype) - self.scale * grad.to(dtype)
        return x_next.to(x_prev.dtype), norm.detach()
