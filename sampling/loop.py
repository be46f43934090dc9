"""The posterior-sampling loop as one function (Gaussian is All You Need, Alg. 1 / Alg. 2, for
any method): per reverse step one network call, the sampler's unconditional proposal, then the
method's ``step(step, y, physics) -> x_{t-1}``."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from priors.base import as_prior
from util.seeding import randn
from .step import NFECounter, Step

log = logging.getLogger(__name__)


@dataclass
class SampleResult:
    """Output of :func:`sample`: x0 (N, C, H, W) final samples (diverged samples are zeros);
    diverged_at: per sample, None or the 0-based step at which it became NaN / inf; nfe:
    network evaluations per image (extra calls of a method included)."""
    x0: torch.Tensor
    diverged_at: list = field(default_factory=list)
    nfe: int = 0


def sample(model: Callable, diffusion: Any, x_T: torch.Tensor, y: Optional[torch.Tensor], method: Any,
           physics: Any, generators: Sequence[torch.Generator], callback: Optional[Callable] = None,
           progress: bool = True, desc: str = "") -> SampleResult:
    """Run the reverse process t = T-1 .. 0 with ``method`` correcting every step.

    Args:
        model: the prior (``priors.Prior``: ε̂ and x0_hat at (x_t, t), :meth:`Prior.denoise`), or a
            bare ε-network ``model(x (N,C,H,W), timesteps (N,))`` (wrapped as
            ``priors.CallablePrior``, bit-identical to calling it).
        diffusion: a DDPM / DDIM sampler (``guided_diffusion.gaussian_diffusion``) on the prior's
            schedule (``priors.build_sampler``).
        x_T: (N, C, H, W) initial noise in the prior's shape (``Prior.draw_x_T``).
        y: the measurement (``physics.measure``'s output) or None (unconditional).
        method: a ``solvers.Solver``; ``needs_grad = True`` gets x_t with requires_grad and the
            graph to x0_hat / ε̂, the others run under ``torch.inference_mode()``.
        physics: an ``operators.Physics`` (or None with y None).
        generators: N CPU torch.Generator; sample n's noise comes from generators[n] only.
        callback: ``callback(i, t, x0_hat (N,C,H,W), residual (N,))`` after every step.
        progress: tqdm bar with t and the mean residual ||y - A x0_hat||.
    Returns: :class:`SampleResult`; a sample that becomes NaN / inf is frozen at zeros.
    Raises: ValueError when len(generators) != N or the method cannot use this physics.
    """
    n = x_T.shape[0]
    if len(generators) != n:
        raise ValueError(f"need one generator per sample: {len(generators)} for a batch of {n}")
    method.check(physics)
    prior = as_prior(model, x_T.shape[1:])
    needs_grad, nfe = bool(method.needs_grad), NFECounter()
    diverged, alive = [None] * n, torch.ones(n, dtype=torch.bool, device=x_T.device)
    x = x_T.detach().float()
    bar = tqdm(range(diffusion.num_timesteps - 1, -1, -1), desc=desc or "sampling", disable=not progress,
               leave=False, dynamic_ncols=True)
    with nullcontext() if needs_grad else torch.inference_mode():
        for i, t in enumerate(bar):
            tb = torch.full((n,), t, device=x.device, dtype=torch.long)
            noise = randn(x.shape[1:], generators, device=x.device) if t > 0 else torch.zeros_like(x)
            x_t = x.detach().requires_grad_(True) if needs_grad else x
            out = prior.denoise(diffusion, x_t, tb)
            nfe.add(1)
            plain = {k: v.detach() for k, v in out.items()}
            step = Step(i=i, t=t, t_prev=t - 1, x_t=x_t, alpha_bar=diffusion.alpha_bar(tb),
                        alpha_bar_prev=diffusion.alpha_bar_prev(tb), eps=out["eps"], x0_hat=out["x0_hat"],
                        proposal=diffusion.proposal(plain, x, tb, noise), noise=noise, eta=diffusion.eta,
                        sigma_t=diffusion.proposal_std(plain, tb), diffusion=diffusion, generators=generators,
                        model=prior, nfe=nfe)
            x = method.step(step, y, physics).detach()
            finite = torch.isfinite(x.reshape(n, -1)).all(dim=1)
            for k in torch.nonzero(alive & ~finite).flatten().tolist():
                diverged[k] = i
                log.warning("sample %d of the batch diverged (NaN/inf) at step %d (t=%d); it is stopped", k, i, t)
            alive &= finite
            if not bool(alive.all()):
                x = torch.where(alive.reshape(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x))
            if progress or callback is not None:
                residual = step.residual if step.residual is not None else \
                    physics.residual(y, step.x0_hat) if (physics is not None and y is not None) \
                    else torch.zeros(n, device=x.device)
                residual = residual.detach()
                if progress:
                    live = residual[alive]
                    bar.set_postfix(t=t, residual=f"{live.mean().item():.4g}" if live.numel() else "nan")
                if callback is not None:
                    callback(i, t, step.x0_hat.detach(), residual)
    bar.close()
    return SampleResult(x0=x, diverged_at=diverged, nfe=nfe.count)
