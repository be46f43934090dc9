"""The prior interface: what the sampling loop and the methods may ask of a diffusion prior, and
the registry that ``model.kind`` chooses an implementation from (one file per kind).

A prior is, as in k-diffusion's model wrappers (``OpenAIDenoiser``, ``CompVisDenoiser``,
``VDenoiser``), one small call plus its schedule:

* ``prior(x_t, timesteps) -> ε̂``: the noise estimate at x_t (N, C, H, W) and the prior's own
  timestep values (N,) (integer indices of its training process; ``rescale_timesteps`` feeds
  t · 1000 / T as guided-diffusion does), ε in the convention x_t = √ᾱ x_0 + √(1 − ᾱ) ε (Ho et
  al. 2020, eq. 4). A prior with learned variances returns 2C channels (ε̂, v) (Nichol &
  Dhariwal 2021, eq. 15).
* :meth:`Prior.denoise` ``(diffusion, x_t, t) -> {"eps", "x0_hat", ...}``: ε̂ and the Tweedie
  estimate x0_hat = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t at respaced index t of the sampler, with the
  reverse-step Gaussian the DDPM / DDIM proposals use.
* the schedule: ``alphas_cumprod`` (T,) ᾱ over the prior's own timesteps (float64); the sampler
  is built on it with the diffusion config's respacing (:func:`priors.build_sampler`), so the
  respaced grid and ᾱ of every step are the sampler's ``timestep_map`` / ``alphas_cumprod``.
* ``shape`` (C, H, W) of x_t: x_T is drawn in it (:meth:`Prior.draw_x_T`).

The config side (checked before anything large loads) is a few class methods: the model-config
keys a kind accepts, its image shape, its schedule's β and the checks of what it can serve.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np
import torch

from util.config import ConfigError

_REGISTRY: dict[str, type["Prior"]] = {}

#: The kind of a model config without ``kind``.
DEFAULT_KIND = "guided_diffusion"


def register_prior(kind: str) -> Callable[[type["Prior"]], type["Prior"]]:
    """Class decorator registering a :class:`Prior` subclass as ``model.kind: <kind>``.
    Raises ValueError for an empty or already registered kind."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"prior kinds must be non-empty strings, got {kind!r}")

    def decorator(cls: type["Prior"]) -> type["Prior"]:
        if kind in _REGISTRY:
            raise ValueError(f"prior kind {kind!r} is already registered")
        _REGISTRY[kind] = cls
        cls.kind = kind
        return cls

    return decorator


def list_priors() -> list[str]:
    """The registered prior kinds, sorted."""
    return sorted(_REGISTRY)


def prior_class(model_cfg: Mapping[str, Any]) -> type["Prior"]:
    """The class of ``model_cfg["kind"]`` (default :data:`DEFAULT_KIND`). Raises ConfigError
    for a kind that is not registered (listing the valid ones)."""
    kind = model_cfg.get("kind", DEFAULT_KIND)
    if kind not in _REGISTRY:
        raise ConfigError(f"model config: unknown kind {kind!r}; valid kinds: {', '.join(list_priors())}")
    return _REGISTRY[kind]


class Prior:
    """A diffusion prior: ε̂ at (x_t, the prior's timestep values) and its schedule ᾱ.

    Subclasses implement :meth:`eps` (and the class methods of the config side where the
    defaults do not fit) and register with :func:`register_prior`.

    Attributes:
        kind: the ``model.kind`` it is registered as.
        shape: (C, H, W) of x_t.
        alphas_cumprod: (T,) float64 ᾱ of the prior's own timesteps 0..T-1, or None when the
            prior takes the diffusion config's ``noise_schedule`` / ``steps`` (guided-diffusion).
        learned_sigma: whether :meth:`eps` also returns variance channels (2C outputs).
        speed_settings: precision / layout decisions recorded in summary.json ({} if none).
    """

    kind: ClassVar[str] = ""
    #: The model-config keys every kind accepts besides its own.
    common_keys: ClassVar[tuple[str, ...]] = ("kind",)
    learned_sigma: bool = False
    alphas_cumprod: Optional[np.ndarray] = None

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.speed_settings: dict = {}

    # ---- the call -------------------------------------------------------------------------------
    def eps(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """ε̂ (N, C, H, W) (or (N, 2C, H, W) with learned variances) at x_t (N, C, H, W) and the
        prior's own timesteps (N,) (long indices, or floats under ``rescale_timesteps``)."""
        raise NotImplementedError

    def __call__(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """:meth:`eps`: the ``model(x, timesteps)`` signature of guided-diffusion's samplers."""
        return self.eps(x_t, timesteps)

    def denoise(self, diffusion: Any, x_t: torch.Tensor, t: torch.Tensor) -> dict:
        """One network call at respaced indices t (N,) of ``diffusion`` (a sampler built on this
        prior's schedule): {"eps": ε̂ (N, C, H, W) consistent with the processed x0_hat,
        "x0_hat" (= "pred_xstart"): Tweedie's (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t, clipped as the
        diffusion config says, "mean", "variance", "log_variance": p(x_{t-1} | x_t)}
        (``GaussianDiffusion.p_mean_variance``)."""
        out = diffusion.p_mean_variance(self, x_t, t)
        out["x0_hat"] = out["pred_xstart"]
        return out

    def draw_x_T(self, generators: Sequence[torch.Generator], device: str | torch.device = "cpu") -> torch.Tensor:
        """x_T ~ N(0, I) of shape (N, *shape), sample n's from ``generators[n]`` only."""
        from util.seeding import randn
        return randn(self.shape, generators, device=device)

    # ---- the config side (cheap; before anything loads) -----------------------------------------
    @classmethod
    def config_keys(cls) -> list[str]:
        """The model-config keys this kind accepts."""
        raise NotImplementedError

    @classmethod
    def image_shape(cls, model_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
        """(C, H, W) of x_t from the model config. Raises ConfigError."""
        raise NotImplementedError

    @classmethod
    def schedule_betas(cls, model_cfg: Mapping[str, Any]) -> Optional[np.ndarray]:
        """(T,) float64 β of the prior's own training process, or None to take the diffusion
        config's ``noise_schedule`` and ``steps``. Raises ConfigError."""
        return None

    @classmethod
    def check_config(cls, model_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any]) -> None:
        """Refuse (ConfigError, one line) settings this kind cannot serve, before it loads."""
        unknown = sorted(set(model_cfg) - set(cls.config_keys()))
        if unknown:
            raise ConfigError(f"model config: unknown key(s) {unknown} for kind {cls.kind}; valid keys: "
                              f"{', '.join(cls.config_keys())}")

    @classmethod
    def build(cls, model_cfg: Mapping[str, Any], device: str | torch.device) -> "Prior":
        """The prior of ``model_cfg`` on ``device``, in eval mode. Raises FileNotFoundError for
        a missing checkpoint (saying where it is published), ConfigError / ValueError."""
        raise NotImplementedError

    @classmethod
    def resolved(cls, model_cfg: Mapping[str, Any]) -> dict:
        """Every model parameter a run uses, defaults included (summary.json)."""
        return {"kind": cls.kind, **dict(model_cfg)}


def check_own_schedule(kind: str, diffusion_cfg: Mapping[str, Any], steps: int) -> None:
    """For a prior with its own schedule: refuse a diffusion config that sets ``steps`` to
    another length, a ``noise_schedule`` (the prior's is used), ``rescale_timesteps: true`` (the network takes its own integer timesteps)
    or ``model_var_type: learned_range`` (no variance outputs). Raises ConfigError."""
    if "steps" in diffusion_cfg and diffusion_cfg["steps"] != steps:
        raise ConfigError(f"diffusion config: steps {diffusion_cfg['steps']!r} but the {kind} prior's schedule has "
                          f"{steps} timesteps; set steps: {steps} or leave it out")
    if "noise_schedule" in diffusion_cfg:
        raise ConfigError(f"diffusion config: noise_schedule {diffusion_cfg['noise_schedule']!r} is set, but the {kind} "
                          "prior brings its own schedule; remove noise_schedule from the diffusion config")
    if diffusion_cfg.get("rescale_timesteps", False):
        raise ConfigError(f"diffusion config: rescale_timesteps: true is not supported by kind {kind} (its network "
                          "takes its own integer timesteps); set rescale_timesteps: false")
    if diffusion_cfg.get("model_var_type", "learned_range") == "learned_range":
        raise ConfigError(f"diffusion config: model_var_type learned_range needs learned variances, which a {kind} "
                          "prior does not give; set model_var_type: fixedsmall or fixedlarge")


class CallablePrior(Prior):
    """A bare ``model(x, timesteps) -> ε̂`` (a guided-diffusion UNet, ``GMMEpsilon``, a test
    network) as a prior, its images of ``shape`` and the diffusion config's schedule: what
    :func:`sampling.sample` makes of a model that is not a :class:`Prior`. The call is the
    model's own, so results are bit-identical to calling it directly."""

    def __init__(self, net: Callable, shape: Sequence[int]) -> None:
        super().__init__(shape)
        self.net = net
        self.speed_settings = dict(getattr(net, "speed_settings", {}) or {})

    def eps(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x_t, timesteps)


def as_prior(model: Any, shape: Sequence[int]) -> Prior:
    """``model`` itself when it is a :class:`Prior`, else a :class:`CallablePrior` of images of
    ``shape`` (C, H, W)."""
    return model if isinstance(model, Prior) else CallablePrior(model, shape)


def build_sampler(model_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any]) -> Any:
    """The DDPM / DDIM sampler of ``diffusion_cfg`` on the prior's schedule: guided-diffusion's
    ``create_sampler(**diffusion_cfg)`` (keys and values checked there), rebuilt on the prior's
    own β (:meth:`Prior.schedule_betas`) when it has one, with the same respacing, clipping,
    variance type and η. Raises ConfigError / ValueError (one line)."""
    from guided_diffusion.gaussian_diffusion import create_sampler
    cls = prior_class(model_cfg)
    betas = cls.schedule_betas(model_cfg)
    if betas is None:
        return create_sampler(**dict(diffusion_cfg))
    cfg = {**dict(diffusion_cfg), "steps": len(betas)}
    cls.check_config(model_cfg, diffusion_cfg)
    sampler = create_sampler(**cfg)          # checks every key and value (the respacing against len(betas))
    kwargs = dict(model_mean_type=sampler.model_mean_type, model_var_type=sampler.model_var_type,
                  timestep_respacing=cfg.get("timestep_respacing", ""), rescale_timesteps=sampler.rescale_timesteps,
                  clip_denoised=sampler.clip_denoised, dynamic_threshold=sampler.dynamic_threshold)
    if cfg.get("sampler", "ddpm") == "ddim":
        kwargs["eta"] = sampler.eta
    return type(sampler)(np.asarray(betas, dtype=np.float64), **kwargs)
