"""Restore one batch: measure → sample → score. The one implementation of the recipe that the
CLI runner (``runner.Runner``), every benchmark command and the tests call.

Image i of a run (its index in the dataset or digit set) draws its kernel or mask from the
generator seeded by (seed, i, operator stream), its measurement noise from (seed, i, noise
stream) and its sampler noise from (seed, i, sampler stream) (``util.seeding``), so a result does
not depend on the batch it is in, its batch size or the process that runs it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from sampling import sample
from util.measurement_io import set_params
from util.metrics import psnr, ssim
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators


@dataclass
class Restored:
    """What :func:`restore` made of a batch of N images.

    Attributes:
        x0: (N, C, H, W) reconstructions in [-1, 1] (a diverged one is zeros).
        y: the measurements (the operator's output geometry), on the [-1, 1] scale (None when
            sampling unconditionally).
        nfe: network evaluations per image, as the sampling loop counted them.
        seconds: wall seconds of the sampling per image (measurement and scoring excluded).
        diverged_at: per image, the step where it became non-finite, or None.
        ok: indices n (into the batch) of the images that did not diverge.
        psnr, ssim: per image of ``ok`` (dB; unitless), on ``metric_norm``-mapped [0, 1] images,
            when the clean images were given; else empty.
    """
    x0: torch.Tensor
    y: torch.Tensor | None
    nfe: int
    seconds: float
    diverged_at: list
    ok: list
    psnr: list = field(default_factory=list)
    ssim: list = field(default_factory=list)


def measure(physics: Any, x: torch.Tensor, indices: Sequence[int], seed: int, fixed_params: Any = None) -> torch.Tensor:
    """y = A x + n for clean images x (N, C, H, W) in [-1, 1], image ``indices[n]`` drawing its
    kernel or mask from (seed, i, operator stream) (or taking ``fixed_params``, a kernel (s, s) or
    mask (H, W) for all) and its noise from (seed, i, noise stream). Sets ``physics`` up for this
    batch (``Physics.measure``)."""
    noise = torch_generators(seed, indices, STREAM_NOISE)
    if fixed_params is not None:
        set_params(physics, [fixed_params] * len(indices), tuple(x.shape))
        return physics.measure(x, None, noise)
    return physics.measure(x, numpy_rngs(seed, indices, STREAM_OPERATOR), noise)


def restore(model: Any, sampler: Any, physics: Any, solver: Any, indices: Sequence[int], seed: int,
            x: torch.Tensor | None = None, y: torch.Tensor | None = None, fixed_params: Any = None,
            image_shape: tuple[int, int, int] | None = None, metric_norm: str = "clip",
            callback: Callable | None = None, progress: bool = False, desc: str = "",
            device: str | torch.device | None = None) -> Restored:
    """Restore the images ``indices`` (a batch): measure the clean ``x`` (:func:`measure`) unless
    the measurements ``y`` are given (``physics`` then already set up for them), sample each
    posterior from x_T drawn from (seed, i, sampler stream) with ``solver``
    (:func:`sampling.sample`), and score the reconstructions against ``x`` when it is given.

    Args:
        model: the ε-network (or prior) the sampler calls; sampler: the DDPM / DDIM sampler.
        physics: an ``operators.Physics``; solver: a ``solvers.Solver`` (checked against it).
        indices: N image indices (they seed the streams); seed: the run's seed.
        x: (N, C, H, W) clean images in [-1, 1], or None (measurement mode without ground truth).
        y: measurements to restore instead of measuring x, or None.
        image_shape: (C, H, W) of the images when ``x`` is None.
        metric_norm: "clip" or "minmax" (``util.metrics.to_unit``) for PSNR / SSIM.
        callback: ``callback(i, t, x0_hat, residual)`` after every step (``sampling.sample``).
        device: where x_T goes when neither ``x`` nor ``y`` is given (unconditional sampling:
            ``physics`` None and ``solver`` the ``none`` method); default cpu.

    Returns: :class:`Restored`.

    Raises: ValueError when neither ``x`` nor ``y`` is given, or from the solver / sampler.
    """
    if y is None and physics is not None:
        if x is None:
            raise ValueError("restore needs the clean images x or the measurements y")
        y = measure(physics, x, indices, seed, fixed_params)
    if x is None and image_shape is None:
        raise ValueError("restore needs image_shape (C, H, W) when no clean images are given")
    shape = tuple(x.shape[1:]) if x is not None else tuple(image_shape)
    shape = tuple(getattr(model, "shape", None) or shape)   # x_T in the prior's shape (a priors.Prior has one)
    device = y.device if y is not None else (x.device if x is not None else torch.device(device or "cpu"))
    generators = torch_generators(seed, indices, STREAM_SAMPLER)
    x_T = randn(shape, generators, device=device)
    _sync(device)
    start = time.perf_counter()
    result = sample(model, sampler, x_T, y, solver, physics, generators, callback=callback, progress=progress,
                    desc=desc)
    _sync(device)
    seconds = (time.perf_counter() - start) / len(indices)
    x0 = result.x0.detach()
    ok = [n for n in range(len(indices)) if result.diverged_at[n] is None and bool(torch.isfinite(x0[n]).all())]
    out = Restored(x0, y, int(result.nfe), seconds, list(result.diverged_at), ok)
    if x is not None and ok:
        out.psnr = [float(v) for v in psnr(x0[ok], x[ok], metric_norm)]
        out.ssim = [float(v) for v in ssim(x0[ok], x[ok], metric_norm)]
    return out


def _sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
