"""``model.kind: diffusers``: an unconditional pixel-space ``diffusers.UNet2DModel`` loaded with
``from_pretrained`` from a local folder (``model.model_path``; nothing is downloaded at run
time), on its own scheduler's β (``scheduler_config.json``) and with its own parametrisation
(``prediction_type``: ε, v (Salimans & Ho 2022, eq. 10 ff.) or x_0), e.g. the DDPM checkpoints
google/ddpm-celebahq-256, google/ddpm-cifar10-32 and google/ddpm-church-256 (ckpts/README.md).

The folder is either the published layout (``config.json``, the weights and
``scheduler_config.json`` side by side) or a pipeline's (``unet/`` and ``scheduler/``).
Class-conditional (``num_class_embeds``, ``class_embed_type``, ``UNet2DConditionModel``) and latent
checkpoints (a VAE / VQ-VAE in the folder) are refused: the sampler passes no labels and works
in pixel space. diffusers is an optional dependency (requirements-diffusers.txt).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np
import torch

from util.config import ConfigError

from .base import Prior, check_own_schedule, register_prior

#: Published unconditional pixel-space checkpoints this kind loads (Hugging Face Hub repositories).
EXAMPLES = ("google/ddpm-celebahq-256", "google/ddpm-cifar10-32", "google/ddpm-church-256")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_LATENT_PARTS = ("vae", "vqvae", "vq_vae", "autoencoder")


def _diffusers():
    """The diffusers module; ConfigError (one line) when it is not installed."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError("model config: kind diffusers needs the optional package diffusers; install it with "
                          "pip install -r requirements-diffusers.txt") from None
    return diffusers


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model config: cannot read {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(out, dict):
        raise ConfigError(f"model config: {path} is not a JSON object")
    return out


def folder_layout(model_path: Any) -> tuple[str, str]:
    """(UNet folder, scheduler_config.json path) of a diffusers checkpoint folder.

    Raises ConfigError (one line): an empty or missing folder (naming what to download and
    where), no UNet ``config.json`` or no ``scheduler_config.json``, a latent checkpoint (a VAE
    / VQ-VAE in the folder or its ``model_index.json``)."""
    if not isinstance(model_path, str) or not model_path:
        raise ConfigError("model config: kind diffusers needs model_path, a local diffusers checkpoint folder "
                          f"(e.g. one of {', '.join(EXAMPLES)}; see ckpts/README.md)")
    if not os.path.isdir(model_path):
        base = os.path.basename(os.path.normpath(model_path))
        repo = next((r for r in EXAMPLES if r.split("/")[1] == base), None)
        what = f"the Hugging Face Hub repository {repo}" if repo else f"a diffusers UNet2DModel checkpoint (e.g. {EXAMPLES[0]})"
        raise ConfigError(f"model config: model_path {model_path!r} is not a folder; download {what} into it, e.g. "
                          f"hf download {repo or EXAMPLES[0]} --local-dir {model_path} (see ckpts/README.md)")
    index = os.path.join(model_path, "model_index.json")
    parts = set(_read_json(index)) if os.path.isfile(index) else set()
    latent = sorted(p for p in _LATENT_PARTS if p in parts or os.path.isdir(os.path.join(model_path, p)))
    if latent:
        raise ConfigError(f"model config: {model_path} is a latent diffusion checkpoint (it has {', '.join(latent)}); "
                          "kind diffusers takes pixel-space UNet2DModel checkpoints only")
    unet = os.path.join(model_path, "unet") if os.path.isfile(os.path.join(model_path, "unet", "config.json")) \
        else model_path
    if not os.path.isfile(os.path.join(unet, "config.json")):
        raise ConfigError(f"model config: {model_path} holds no UNet config.json (neither at the top nor in unet/)")
    for sched in (os.path.join(model_path, "scheduler", "scheduler_config.json"),
                  os.path.join(model_path, "scheduler_config.json")):
        if os.path.isfile(sched):
            return unet, sched
    raise ConfigError(f"model config: {model_path} holds no scheduler_config.json (at the top or in scheduler/); "
                      "the prior's β and prediction_type come from it")


def unet_config(model_path: str) -> dict:
    """The UNet's ``config.json``, checked: a ``UNet2DModel`` (not ``UNet2DConditionModel``),
    unconditional (no ``num_class_embeds`` / ``class_embed_type``), as many output as input
    channels, a square ``sample_size``. Raises ConfigError (one line)."""
    unet, _ = folder_layout(model_path)
    cfg = _read_json(os.path.join(unet, "config.json"))
    name = cfg.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise ConfigError(f"model config: {model_path} holds a {name}; kind diffusers takes unconditional "
                          "pixel-space UNet2DModel checkpoints only (no text- or class-conditioning)")
    if cfg.get("num_class_embeds") is not None or cfg.get("class_embed_type") is not None:
        raise ConfigError(f"model config: {model_path} is class-conditional (num_class_embeds "
                          f"{cfg.get('num_class_embeds')!r}, class_embed_type {cfg.get('class_embed_type')!r}); the "
                          "sampler passes no class labels; use an unconditional checkpoint")
    c_in, c_out = cfg.get("in_channels", 3), cfg.get("out_channels", 3)
    if c_in != c_out:
        raise ConfigError(f"model config: {model_path} has {c_in} input but {c_out} output channels (learned "
                          "variances are not supported for kind diffusers)")
    size = cfg.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ConfigError(f"model config: {model_path} has sample_size {size!r}; square images only")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError(f"model config: {model_path} has no positive integer sample_size (got {size!r})")
    return {**cfg, "sample_size": size, "in_channels": c_in}


def scheduler_config(model_path: str) -> dict:
    """The folder's ``scheduler_config.json``, checked: ``prediction_type`` in
    :data:`PREDICTION_TYPES`, a fixed variance type. Raises ConfigError (one line)."""
    _, path = folder_layout(model_path)
    cfg = _read_json(path)
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ConfigError(f"model config: {path}: prediction_type {pred!r} is not supported; valid: "
                          f"{', '.join(PREDICTION_TYPES)}")
    if str(cfg.get("variance_type", "fixed_small")).startswith("learned"):
        raise ConfigError(f"model config: {path}: variance_type {cfg['variance_type']!r} (learned variances) is not "
                          "supported for kind diffusers")
    return cfg


@register_prior("diffusers")
class DiffusersPrior(Prior):
    """A diffusers ``UNet2DModel`` ``unet(x_t, t).sample`` as ε̂, with the parametrisation of its
    scheduler (ᾱ = ``alphas_cumprod[t]`` of the prior's schedule)::

        epsilon:       ε̂ = out
        v_prediction:  ε̂ = √ᾱ out + √(1 − ᾱ) x_t      (v = √ᾱ ε − √(1 − ᾱ) x_0)
        sample:        ε̂ = (x_t − √ᾱ out) / √(1 − ᾱ)

    as diffusers' own schedulers convert them (``DDIMScheduler.step``). With ``clip_denoised``
    the sampler recomputes ε̂ from the clipped x0_hat (guided-diffusion's convention, as for
    every kind); diffusers' DDIM with ``clip_sample`` keeps the unclipped ε̂ for the direction
    term, so the two agree exactly without clipping (tests/test_priors.py).

    Args:
        unet: the ``UNet2DModel`` (eval mode, on its device).
        betas: (T,) β of its scheduler.
        prediction_type: one of :data:`PREDICTION_TYPES`.
    """

    def __init__(self, unet: torch.nn.Module, betas: np.ndarray, prediction_type: str = "epsilon") -> None:
        size = unet.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        super().__init__((unet.config.in_channels, size, size))
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.unet, self.prediction_type = unet, prediction_type
        self.alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        self._ab = torch.from_numpy(self.alphas_cumprod)
        self.speed_settings = {"use_fp16": False, "channels_last": False, "compile": False,
                               "speed_reason": "kind diffusers runs the UNet in float32 as loaded"}

    def eps(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """ε̂ (N, C, H, W) float32 at x_t (N, C, H, W) and the scheduler's timesteps (N,) long."""
        out = self.unet(x_t, timesteps).sample.float()
        if self.prediction_type == "epsilon":
            return out
        ab = self._ab.to(x_t.device)[timesteps.long()].float().reshape(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":
            return ab.sqrt() * out + (1 - ab).sqrt() * x_t
        return (x_t - ab.sqrt() * out) / (1 - ab).sqrt()

    # ---- config side -------------------------------------------------------------------------
    @classmethod
    def config_keys(cls) -> list[str]:  # noqa: D102
        return sorted(["model_path", "image_size", "in_channels", "use_fp16", "channels_last", "compile"]
                      + list(cls.common_keys))

    @classmethod
    def image_shape(cls, model_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
        """(in_channels, sample_size, sample_size) of the folder's UNet config; a model config
        that also gives ``image_size`` / ``in_channels`` must agree. Without the folder, the
        config's ``image_size`` / ``in_channels`` (default 3) when given (the shipped example
        configs, checked before a download), else the missing-folder error. Raises ConfigError."""
        path = model_cfg.get("model_path")
        if not (isinstance(path, str) and os.path.isdir(path)) and "image_size" in model_cfg:
            from .guided import GuidedDiffusionPrior
            return GuidedDiffusionPrior.image_shape(model_cfg)
        cfg = unet_config(path)
        shape = (cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
        for key, value in (("image_size", shape[1]), ("in_channels", shape[0])):
            if key in model_cfg and model_cfg[key] != value:
                raise ConfigError(f"model config: {key} {model_cfg[key]!r} but the checkpoint in "
                                  f"{model_cfg['model_path']} has {value}; remove {key} or set it to {value}")
        return shape

    @classmethod
    def schedule_betas(cls, model_cfg: Mapping[str, Any]) -> np.ndarray:
        """The β of the folder's scheduler as diffusers computes them (``DDPMScheduler.from_config``:
        ``beta_schedule``, ``beta_start`` / ``beta_end``, ``trained_betas``), as float64."""
        cfg = scheduler_config(model_cfg.get("model_path"))
        diffusers = _diffusers()
        sched = diffusers.DDPMScheduler.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
        return sched.betas.double().numpy()

    @classmethod
    def check_config(cls, model_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any]) -> None:
        """Unknown keys; the folder (layout, UNet, scheduler: :func:`unet_config`,
        :func:`scheduler_config`); diffusers installed; the diffusion config against the
        prior's own schedule (:func:`priors.base.check_own_schedule`)."""
        super().check_config(model_cfg, diffusion_cfg)
        for key in ("use_fp16", "channels_last", "compile"):
            if str(model_cfg.get(key, "auto")).lower() not in ("false", "auto"):
                raise ConfigError(f"model config: {key}: {model_cfg[key]!r} is not supported for kind diffusers "
                                  "(it runs in float32, NCHW, eager); set false or remove it")
        cls.image_shape(model_cfg)
        check_own_schedule(cls.kind, diffusion_cfg, len(cls.schedule_betas(model_cfg)))

    @classmethod
    def build(cls, model_cfg: Mapping[str, Any], device: str | torch.device) -> "DiffusersPrior":
        """``UNet2DModel.from_pretrained(folder, local_files_only=True)`` in eval mode on
        ``device`` with the scheduler's β and ``prediction_type``. Raises ConfigError (one line)."""
        path = model_cfg.get("model_path")
        unet_dir, _ = folder_layout(path)
        unet_config(path)
        sched = scheduler_config(path)
        diffusers = _diffusers()
        try:
            unet = diffusers.UNet2DModel.from_pretrained(unet_dir, local_files_only=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"model config: cannot load the UNet2DModel in {unet_dir}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        unet = unet.to(device).eval().requires_grad_(False)
        return cls(unet, cls.schedule_betas(model_cfg), sched.get("prediction_type", "epsilon"))

    @classmethod
    def resolved(cls, model_cfg: Mapping[str, Any]) -> dict:
        """The model config with the checkpoint's image shape, prediction type and schedule name."""
        sched = scheduler_config(model_cfg.get("model_path"))
        c, h, _ = cls.image_shape(model_cfg)
        return {"kind": cls.kind, **dict(model_cfg), "image_size": h, "in_channels": c,
                "prediction_type": sched.get("prediction_type", "epsilon"),
                "beta_schedule": sched.get("beta_schedule"), "num_train_timesteps": sched.get("num_train_timesteps")}
