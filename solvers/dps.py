"""DPS, Diffusion Posterior Sampling (Chung, Kim, Mccann, Klasky & Ye, "Diffusion Posterior
Sampling for General Noisy Inverse Problems", ICLR 2023): the baseline data-consistency step that
differentiates the measurement residual through the network."""
from __future__ import annotations

from typing import Any

import torch

from solvers.base import Param, Solver, compute_dtype, register_solver


@register_solver("DPS", "ps")
class DPS(Solver):
    """DPS step (Chung et al. 2023, Algorithm 1 "DPS - Gaussian", line 7), with the norm
    instead of the squared norm as in the authors' code:

        x_{t-1} = x' - ζ ∇_{x_t} ||y - A x0_hat(x_t)||_2,      ζ = ``scale``

    computed per sample (the gradient of the batch sum of per-sample norms, so samples do not
    interact).

    Parameters:
        scale (float >= 0, default 1.0): ζ.

    Reads ``step.x_t`` (requires grad), ``step.x0_hat`` (with the graph: ``needs_grad = True``)
    and ``step.proposal``; the graph is freed by the step; sets ``step.residual``.

    Raises:
        ValueError: (step) ``x_t`` does not require grad or ``x0_hat`` carries no graph.
    """

    needs_grad = True
    needs_linear = False       # any differentiable A: the gradient goes through A by autograd
    params = {"scale": Param(1.0, "nonneg", "ζ, step size of the gradient step")}

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One DPS step: x_{t-1} (N, C, H, W), detached."""
        x_t, x0_hat, x_prev = step.x_t, step.x0_hat, step.proposal
        if not x_t.requires_grad or not x0_hat.requires_grad:
            raise ValueError("DPS needs x_t with requires_grad=True and x0_hat computed from it with "
                             "the autograd graph kept (solver.needs_grad is True)")
        dtype = compute_dtype(x_prev)
        diff = y.detach().to(dtype) - physics.A(x0_hat.to(dtype))
        norm = diff.flatten(1).norm(dim=1)                       # (N,) ||y - A x0_hat||_2
        (grad,) = torch.autograd.grad(norm.sum(), x_t)
        step.residual = norm.detach()
        x_next = x_prev.detach().to(dtype) - self.scale * grad.to(dtype)
        return x_next.to(x_prev.dtype)
