"""The record one reverse step hands to a posterior-sampling method: everything the sampler
knows at step t (x_t, ᾱ_t, ᾱ_{t-1}, ε̂, x0_hat, its unconditional proposal and noise) plus a
lazily computed likelihood weight w_t and a ``denoise`` callable for extra network calls."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch


class NFECounter:
    """Counts network evaluations per image (one per call on the whole batch)."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, k: int = 1) -> None:
        """Add ``k`` evaluations."""
        self.count += int(k)


@dataclass(eq=False)
class Step:
    """What the sampler knows at one reverse step; passed to ``method.step(step, y, physics)``.

    All tensors are float32 (float64 if the loop runs in float64) on the sample's device, with
    N the batch size and (C, H, W) the image shape; per-sample scalars are (N,) vectors (use
    :meth:`bc` to broadcast them over images).

    Attributes:
        i: 0-based count of the step (0 at the first, T-1 at the last).
        t: respaced index of this step (int, counts down T-1 .. 0); shared by the batch. The
            prior sees its own timestep value ``diffusion.timestep_map[t]``.
        t_prev: respaced index of the next step, t - 1 (-1 after the last step).
        x_t: (N, C, H, W) current sample. Requires grad (and x0_hat / eps carry the graph
            through the network) only for methods with ``needs_grad = True``.
        alpha_bar: (N,) ᾱ_t of the respaced process, in (0, 1).
        alpha_bar_prev: (N,) ᾱ_{t-1}, = 1 at the last step (t = 0).
        eps: (N, C, H, W) ε̂, the network's noise estimate (recomputed from the clipped x0_hat,
            so that x_t = √ᾱ_t x0_hat + √(1-ᾱ_t) ε̂ holds exactly).
        x0_hat: (N, C, H, W) Tweedie estimate E[x_0 | x_t], in [-1, 1] when the diffusion
            config clips (``clip_denoised``).
        proposal: (N, C, H, W) the sampler's unconditional x'_{t-1} (DDPM: μ_θ + σ_t z; DDIM:
            Song et al. 2021, eq. 12), detached.
        noise: (N, C, H, W) the sampler noise z ~ N(0, I) used in ``proposal`` (zeros at t = 0),
            drawn per image from ``generators``.
        eta: the DDIM η of the sampler (DDPM's ancestral step is reported as η = 1: its σ_t² =
            β̃_t for ``fixedsmall`` equals DDIM's at η = 1; for ``fixedlarge`` / learned
            variances read ``sigma_t``).
        sigma_t: the std of the sampler noise in ``proposal``, (N, 1, 1, 1) or (N, C, H, W)
            (learned variances); 0 at t = 0 for DDIM.
        diffusion: the sampler (``guided_diffusion.gaussian_diffusion.GaussianDiffusion``):
            schedules (``alphas_cumprod``, ``betas``, ``num_timesteps``) for methods that anneal
            differently.
        model: the prior (``priors.Prior``; a bare ε-network ``model(x, timesteps)`` in a Step
            built by hand): :meth:`denoise` calls it.
        generators: the N per-image CPU ``torch.Generator`` of the sampler noise; a method that
            needs more randomness draws it with :meth:`randn` (same seed, same result whatever
            the batch).
        residual: (N,) ||y - A x0_hat||_2 for the progress bar; a method that computes it
            anyway may set it, else the loop computes it when it is shown.

    Lazily computed:
        weight: (N,) w_t, the weight with which the sampler's proposal takes a likelihood score
            G: adding w_t · G to ``proposal`` gives the proposal of ∇ log p_t(x_t) + G
            (``GaussianDiffusion.score_weight``; derivation in :mod:`solvers.codps`).
    """

    i: int
    t: int
    t_prev: int
    x_t: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    eps: torch.Tensor
    x0_hat: torch.Tensor
    proposal: torch.Tensor
    noise: torch.Tensor
    eta: float
    sigma_t: Any
    diffusion: Any = None
    generators: Sequence[torch.Generator] = ()
    model: Optional[Callable] = None
    nfe: NFECounter = field(default_factory=NFECounter)
    residual: Optional[torch.Tensor] = None
    _weight: Optional[torch.Tensor] = None

    @property
    def n(self) -> int:
        """Batch size N."""
        return self.x_t.shape[0]

    @cached_property
    def weight(self) -> torch.Tensor:
        """(N,) w_t of the sampler (see the class docstring); float of x_t's dtype.

        Raises:
            ValueError: the step has neither a diffusion nor a given weight."""
        if self._weight is not None:
            return torch.as_tensor(self._weight, device=self.x_t.device).expand(self.n)
        if self.diffusion is None:
            raise ValueError("this Step has no diffusion to compute the likelihood weight w_t from; "
                             "pass weight= to make_step")
        return self.diffusion.score_weight(self.t_batch()).to(self.x_t.dtype)

    def t_batch(self, t: Optional[int] = None) -> torch.Tensor:
        """(N,) long tensor filled with ``t`` (default: this step's t)."""
        return torch.full((self.n,), self.t if t is None else int(t), dtype=torch.long, device=self.x_t.device)

    def bc(self, v: torch.Tensor) -> torch.Tensor:
        """An (N,) vector reshaped to (N, 1, 1, 1) to broadcast over x_t."""
        return v.reshape((-1,) + (1,) * (self.x_t.dim() - 1))

    def denoise(self, x: torch.Tensor, t: Optional[int | torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One more network call: (x0_hat, ε̂) at (x (N, C, H, W), respaced index t — an int or an
        (N,) long tensor, default this step's t), as the loop computes them (clipped x0_hat);
        adds 1 to the NFE count. Differentiable when called with grad enabled (methods with
        ``needs_grad``). Raises ValueError when the step has no model."""
        if self.model is None or self.diffusion is None:
            raise ValueError("this Step has no model/diffusion for denoise (built outside sampling.sample)")
        from priors.base import as_prior
        tb = t if isinstance(t, torch.Tensor) else self.t_batch(t)
        out = as_prior(self.model, x.shape[1:]).denoise(self.diffusion, x, tb)
        self.nfe.add(1)
        return out["x0_hat"], out["eps"]

    def randn(self, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """(N, *shape) standard normals (default shape: x_t's (C, H, W)), image n's from
        ``generators[n]``, on x_t's device. Raises ValueError without generators."""
        from util.seeding import randn
        if len(self.generators) != self.n:
            raise ValueError("this Step has no per-image generators to draw noise from")
        return randn(tuple(self.x_t.shape[1:]) if shape is None else tuple(shape), self.generators,
                     device=self.x_t.device).to(self.x_t.dtype)


def make_step(x_t: torch.Tensor, x0_hat: torch.Tensor, proposal: torch.Tensor, t: int,
              alpha_bar: Any, alpha_bar_prev: Any = None, eps: Optional[torch.Tensor] = None,
              noise: Optional[torch.Tensor] = None, weight: Any = None, eta: float = 1.0, sigma_t: Any = 0.0,
              diffusion: Any = None, i: int = 0) -> Step:
    """A :class:`Step` from raw tensors, for unit tests of a method and for benchmarks that time
    one step outside the loop. ``alpha_bar`` / ``alpha_bar_prev`` / ``weight``: numbers or (N,)
    tensors; ``eps`` defaults to the ε̂ consistent with x_t and x0_hat, ``noise`` to zeros,
    ``alpha_bar_prev`` to 1 at t = 0 else ``alpha_bar``. Raises ValueError for a t that is not
    one integer >= 0, or a per-sample vector whose shape is neither (N,) nor scalar."""
    if isinstance(t, torch.Tensor) and t.numel() == 1 and not t.is_floating_point():
        t = int(t.item())
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or int(t) < 0:
        raise ValueError(f"t must be one integer step index >= 0 shared by the batch, got {t!r}")
    n = x_t.shape[0]
    dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32

    def vec(v: Any, name: str = "alpha_bar") -> torch.Tensor:
        out = torch.as_tensor(v, dtype=dtype, device=x_t.device)
        if out.dim() == 0:
            return out.expand(n)
        if out.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) (one value per sample), got {tuple(out.shape)}")
        return out

    ab = vec(alpha_bar)
    ab_prev = vec(1.0 if int(t) == 0 else alpha_bar) if alpha_bar_prev is None else vec(alpha_bar_prev)
    if eps is None:
        a = ab.reshape(-1, *([1] * (x_t.dim() - 1)))
        eps = ((x_t.detach() - a.sqrt() * x0_hat.detach()) / (1 - a).sqrt())
    step = Step(i=i, t=int(t), t_prev=int(t) - 1, x_t=x_t, alpha_bar=ab, alpha_bar_prev=ab_prev, eps=eps,
                x0_hat=x0_hat, proposal=proposal, noise=torch.zeros_like(proposal) if noise is None else noise,
                eta=eta, sigma_t=sigma_t, diffusion=diffusion,
                _weight=None if weight is None else vec(weight, "weight"))
    return step
