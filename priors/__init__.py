"""Diffusion priors behind one small interface (:class:`Prior`: ε̂ and x0_hat at (x_t, t), the
schedule ᾱ, the shape of x_t), chosen by ``model.kind`` in the model config, one file per kind:
``guided_diffusion`` (default; the ADM UNet, official checkpoints and the embedded prior),
``diffusers`` (a local pixel-space ``UNet2DModel`` folder; optional dependency) and ``gmm`` (the
exact Gaussian-mixture prior). docs/framework.md says how to add one."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from priors.base import (DEFAULT_KIND, CallablePrior, Prior, as_prior, build_sampler, check_own_schedule,
                         list_priors, prior_class, register_prior)
from priors import diffusers_unet, gmm, guided  # noqa: F401,E402  (registers the kinds)

__all__ = ["DEFAULT_KIND", "CallablePrior", "Prior", "as_prior", "build_prior", "build_sampler",
           "check_own_schedule", "config_keys", "image_shape", "list_priors", "prior_class", "register_prior"]


def config_keys(model_cfg: Mapping[str, Any] | None = None) -> list[str]:
    """The model-config keys of ``model_cfg``'s kind (default kind without a config)."""
    return prior_class(model_cfg or {}).config_keys()


def image_shape(model_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of x_t for the model config (its kind's ``image_shape``). Raises ConfigError."""
    return prior_class(model_cfg).image_shape(model_cfg)


def build_prior(model_cfg: Mapping[str, Any], device: str | torch.device) -> Prior:
    """The :class:`Prior` of ``model_cfg`` (``kind`` chooses the class) on ``device``, in eval
    mode. Raises ConfigError / ValueError / FileNotFoundError (one-line messages)."""
    return prior_class(model_cfg).build(model_cfg, device)
