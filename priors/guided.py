"""``model.kind: guided_diffusion`` (the default): the ADM UNet of guided-diffusion (Dhariwal &
Nichol 2021), i.e. the official FFHQ / ImageNet checkpoints and the embedded MNIST prior, built by
``guided_diffusion.unet.create_model`` from the model config; ε̂ is the network's own output, so
a run is bit-identical to calling the UNet directly."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch

from util.config import ConfigError

from .base import CallablePrior, register_prior


@register_prior("guided_diffusion")
class GuidedDiffusionPrior(CallablePrior):
    """The UNet ``net(x (N, C, H, W), timesteps (N,)) -> ε̂`` (2C channels with ``learn_sigma``)
    on the diffusion config's schedule (``noise_schedule``, ``steps``); timesteps are the
    original-process indices (``timestep_map[t]``), rescaled to [0, 1000) under
    ``rescale_timesteps``.

    Args:
        net: the UNet (eval mode, on its device).
        shape: (C, H, W) of its images.
        learned_sigma: whether the UNet outputs variance channels (``learn_sigma: true``).
    """

    def __init__(self, net: Callable, shape, learned_sigma: bool = False) -> None:
        super().__init__(net, shape)
        self.learned_sigma = bool(learned_sigma)

    @classmethod
    def config_keys(cls) -> list[str]:
        """The keyword parameters of ``create_model`` (``channels_last`` and ``compile``
        included, ``device`` excluded) and ``kind``."""
        from guided_diffusion.unet import create_model
        params = inspect.signature(create_model).parameters.values()
        keys = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "device"]
        return sorted(keys + list(cls.common_keys))

    @classmethod
    def image_shape(cls, model_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
        """(in_channels (default 3), image_size, image_size). Raises ConfigError when they are
        missing or not positive integers."""
        size, channels = model_cfg.get("image_size"), model_cfg.get("in_channels", 3)
        for key, value in (("image_size", size), ("in_channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model config: {key} must be a positive integer, got {value!r}")
        return channels, size, size

    @classmethod
    def build(cls, model_cfg: Mapping[str, Any], device: str | torch.device) -> "GuidedDiffusionPrior":
        """``create_model(**model_cfg, device=device)`` in eval mode, ``use_fp16`` defaulting to
        ``auto`` (a run's default; ``create_model``'s own is fp32), its precision / layout /
        compilation decisions in ``speed_settings``. Raises FileNotFoundError for a missing
        checkpoint (saying where it is published), ValueError for bad keys or a mismatch."""
        from guided_diffusion.unet import create_model
        cfg = {k: v for k, v in dict(model_cfg).items() if k != "kind"}
        cfg.setdefault("use_fp16", "auto")
        net = create_model(**cfg, device=device)
        return cls(net, cls.image_shape(cfg), bool(cfg.get("learn_sigma", False)))
