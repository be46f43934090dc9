"""``model.kind: gmm``: the exact Gaussian-mixture prior (``guided_diffusion.gmm``), whose
diffused score is closed-form, so that ``main.py`` runs the exact-posterior problems of
``benchmarks.gmm`` (the 25-component grid mixture of MCGdiff, Cardoso et al. 2024, and TMPD,
Boys et al. 2024, or a mixture given in the config).

Model config (``configs/GMM/DDIM/model_config.yaml``)::

    kind: gmm
    mixture: grid          # grid: grid_mixture(dim, seed, spacing); explicit: weights, means, covariances
    dim: 16                # d
    seed: 0                # the grid mixture's weights
    spacing: 8.0           # the grid mixture's spacing s
    shape: [1, 4, 4]       # (C, H, W) of x_t, C·H·W = d (default (1, √d, √d) for a square d, else (d, 1, 1))
    noise_schedule: linear # the schedule the exact ε is taken on (default linear, 1000 steps)
    steps: 1000
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from util.config import ConfigError

from .base import Prior, check_own_schedule, register_prior

MIXTURES = ("grid", "explicit")


@register_prior("gmm")
class GMMPrior(Prior):
    """The exact ε(x_t) = −√(1 − ᾱ_t) ∇ log p_t(x_t) of a diffused
    :class:`guided_diffusion.gmm.GaussianMixture` (``GMMEpsilon``; computed in float64 and
    differentiable, so DPS / ΠGDM / TMPD backpropagate through it), on its own schedule.

    Args:
        mixture: the prior p(x_0) in R^d.
        betas: (T,) β of the schedule ε is taken on.
        shape: (C, H, W) of x_t with C·H·W = d.

    Raises:
        ValueError: a shape whose size is not d.
    """

    def __init__(self, mixture: Any, betas: np.ndarray, shape) -> None:
        from guided_diffusion.gmm import GMMEpsilon
        super().__init__(shape)
        if int(np.prod(self.shape)) != mixture.dim:
            raise ValueError(f"gmm: shape {self.shape} has {int(np.prod(self.shape))} values, the mixture d = {mixture.dim}")
        self.mixture = mixture
        self.alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        self.net = GMMEpsilon(mixture, self.alphas_cumprod)

    def eps(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Exact ε̂ of x_t's shape, dtype and device at original-process indices ``timesteps``
        (N,) (computed on the CPU, where the mixture lives; differentiable across the move)."""
        return self.net(x_t.cpu(), timesteps.cpu()).to(x_t.device)

    # ---- config side -------------------------------------------------------------------------
    @classmethod
    def config_keys(cls) -> list[str]:  # noqa: D102
        return sorted(["mixture", "dim", "seed", "spacing", "weights", "means", "covariances", "shape",
                       "noise_schedule", "steps", "model_path"] + list(cls.common_keys))

    @classmethod
    def mixture_of(cls, model_cfg: Mapping[str, Any]) -> Any:
        """The :class:`GaussianMixture` of the config. Raises ConfigError (one line)."""
        from guided_diffusion.gmm import GaussianMixture, grid_mixture
        kind = model_cfg.get("mixture", "grid")
        try:
            if kind == "grid":
                dim = model_cfg.get("dim")
                if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
                    raise ConfigError(f"model config: dim must be an integer >= 2 for mixture: grid, got {dim!r}")
                spacing = model_cfg.get("spacing", 8.0)
                if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not spacing > 0:
                    raise ConfigError(f"model config: spacing must be a number > 0, got {spacing!r}")
                seed = model_cfg.get("seed", 0)
                if isinstance(seed, bool) or not isinstance(seed, int):
                    raise ConfigError(f"model config: seed must be an integer, got {seed!r}")
                return grid_mixture(dim, seed=seed, spacing=float(spacing))
            if kind == "explicit":
                missing = [k for k in ("weights", "means", "covariances") if k not in model_cfg]
                if missing:
                    raise ConfigError(f"model config: mixture: explicit needs {', '.join(missing)}")
                return GaussianMixture(model_cfg["weights"], model_cfg["means"], model_cfg["covariances"])
        except (ValueError, TypeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"model config: gmm mixture: {' '.join(str(exc).split())}") from None
        raise ConfigError(f"model config: unknown mixture {kind!r}; valid: {', '.join(MIXTURES)}")

    @classmethod
    def image_shape(cls, model_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
        """``shape`` of the config, else (1, √d, √d) for a square d, else (d, 1, 1).
        Raises ConfigError for a shape that is not three positive integers of product d."""
        dim = cls.mixture_of(model_cfg).dim
        shape = model_cfg.get("shape")
        if shape is None:
            side = math.isqrt(dim)
            return (1, side, side) if side * side == dim else (dim, 1, 1)
        if not isinstance(shape, (list, tuple)) or len(shape) != 3 or \
                any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape) or \
                int(np.prod(shape)) != dim:
            raise ConfigError(f"model config: shape must be [C, H, W] of positive integers with C*H*W = d = {dim}, "
                              f"got {shape!r}")
        return tuple(shape)

    @classmethod
    def schedule_betas(cls, model_cfg: Mapping[str, Any]) -> np.ndarray:
        """β of ``noise_schedule`` (default linear) over ``steps`` (default 1000)."""
        from guided_diffusion.respace import get_named_beta_schedule
        try:
            return get_named_beta_schedule(model_cfg.get("noise_schedule", "linear"), model_cfg.get("steps", 1000))
        except ValueError as exc:
            raise ConfigError(f"model config (kind gmm): {' '.join(str(exc).split())}") from None

    @classmethod
    def check_config(cls, model_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any]) -> None:
        """Unknown keys, the mixture, the shape, and the diffusion config against the prior's
        own schedule (:func:`priors.base.check_own_schedule`)."""
        super().check_config(model_cfg, diffusion_cfg)
        cls.image_shape(model_cfg)
        if model_cfg.get("model_path") not in (None, ""):
            raise ConfigError("model config: kind gmm has no checkpoint; remove model_path")
        check_own_schedule(cls.kind, diffusion_cfg, len(cls.schedule_betas(model_cfg)))

    @classmethod
    def build(cls, model_cfg: Mapping[str, Any], device: str | torch.device) -> "GMMPrior":
        """The prior of the config (computed on the CPU in float64; inputs on any device)."""
        return cls(cls.mixture_of(model_cfg), cls.schedule_betas(model_cfg), cls.image_shape(model_cfg))
