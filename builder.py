"""Turn the three configs (model, diffusion, task) into the objects of a run: the network, the
sampler, the measurement operator and noise, the solver and the test images. With ``main.py``,
the only code that reads config dicts.

Everything cheap is built and checked first (:func:`build_problem`), so that a bad name, key or
value fails before the (large) model loads."""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from data.dataloader import ImageDataset, get_dataset
from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.unet import create_model, resolve_channels_last
from util.config import ConfigError, check_task_layout
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, numpy_rngs, torch_generators

log = logging.getLogger(__name__)


def _signature_keys(fn, exclude: tuple[str, ...] = ()) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return sorted(p.name for p in params
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in exclude)


def model_config_keys(model_cfg: Mapping[str, Any] | None = None, all_kinds: bool = False) -> list[str]:
    """Keys a model config of ``model_cfg``'s ``kind`` may hold (``priors``; the default kind
    guided_diffusion: the keyword parameters of ``create_model``, ``channels_last`` included, and
    ``kind``); ``all_kinds``: the keys of every kind (for command-line overrides, which may
    change the kind)."""
    import priors
    if all_kinds:
        return sorted({k for kind in priors.list_priors() for k in priors.config_keys({"kind": kind})})
    return priors.config_keys(model_cfg)


def diffusion_config_keys() -> list[str]:
    """Keys a diffusion config may hold (the keyword parameters of ``create_sampler``)."""
    return _signature_keys(create_sampler)


def image_shape(model_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of the prior's x_t from a model config (``priors.image_shape``; guided-diffusion:
    ``in_channels`` (default 3), ``image_size``). Raises ConfigError when image_size /
    in_channels are missing or not positive integers."""
    import priors
    return priors.image_shape(model_cfg)


#: Types of the model-config keys: "posint" (an integer > 0), "heads" (an integer > 0, or -1 for
#: "not set"), "bool", "fraction" (a number in [0, 1)), "str"; the others (channel_mult,
#: attention_resolutions, channels_last) are parsed and checked by ``create_model``.
#: (``use_fp16``, ``channels_last`` and ``compile`` take true / false / auto: :func:`check_speed_settings`.)
MODEL_KEY_TYPES = {
    "image_size": "posint", "num_channels": "posint", "num_res_blocks": "posint", "in_channels": "posint",
    "num_heads": "posint", "num_head_channels": "heads", "num_heads_upsample": "heads",
    "learn_sigma": "bool", "class_cond": "bool", "use_checkpoint": "bool", "use_scale_shift_norm": "bool",
    "resblock_updown": "bool", "use_new_attention_order": "bool",
    "dropout": "fraction", "model_path": "str",
}
#: Types of the diffusion-config keys (as :data:`MODEL_KEY_TYPES`; the names and the respacing
#: are checked by ``create_sampler``).
DIFFUSION_KEY_TYPES = {"steps": "posint", "clip_denoised": "bool", "rescale_timesteps": "bool",
                       "dynamic_threshold": "bool", "sampler": "str", "noise_schedule": "str",
                       "model_mean_type": "str", "model_var_type": "str"}
_TYPE_WORDS = {"posint": "a positive integer", "heads": "a positive integer or -1", "bool": "true or false",
               "fraction": "a number in [0, 1)", "str": "a string"}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if kind == "fraction":
        return isinstance(value, (int, float)) and 0 <= value < 1
    if kind in ("posint", "heads"):
        return isinstance(value, int) and (value > 0 or (kind == "heads" and value == -1))
    raise KeyError(kind)


def check_config_types(cfg: Mapping[str, Any], types: Mapping[str, str], what: str) -> None:
    """Check the type of every key of ``cfg`` listed in ``types`` (see :data:`MODEL_KEY_TYPES`).
    Raises ConfigError naming the key, the value and the expected type
    (``model config: num_channels must be a positive integer, got 1.5``)."""
    for key, kind in types.items():
        if key in cfg and not _type_ok(kind, cfg[key]):
            raise ConfigError(f"{what}: {key} must be {_TYPE_WORDS[kind]}, got {cfg[key]!r}")


def check_servable(model_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any]) -> None:
    """Refuse model / diffusion settings that the sampler cannot serve, before anything is
    written: a class-conditional model (``class_cond: true``; the sampler passes no class
    labels) and ``model_var_type: learned_range`` without ``learn_sigma: true`` (the network
    would output no variance channels). Raises ConfigError (one line)."""
    if model_cfg.get("class_cond", False):
        raise ConfigError("model config: class_cond: true is not supported (the sampler passes no class labels); "
                          "use an unconditional checkpoint with class_cond: false")
    var_type = diffusion_cfg.get("model_var_type", "learned_range")
    if var_type == "learned_range" and not model_cfg.get("learn_sigma", False):
        raise ConfigError("diffusion config: model_var_type learned_range needs model.learn_sigma: true (a network "
                          "with variance outputs); set learn_sigma: true or model_var_type: fixedlarge / fixedsmall")


def warn_random_weights(model_cfg: Mapping[str, Any]) -> bool:
    """Log one loud warning when ``model_path`` is empty (the network gets random weights);
    returns whether it did."""
    if model_cfg.get("model_path", "") in ("", None):
        log.warning("model.model_path is empty: the network has RANDOM WEIGHTS and the reconstructions are "
                    "meaningless; set model.model_path to a checkpoint (see ckpts/README.md)")
        return True
    return False


def warn_untuned_respacing(conditioning: Mapping[str, Any], diffusion_cfg: Mapping[str, Any],
                           num_steps: int) -> bool:
    """Log one warning when the run's number of steps differs from the one the task config was
    tuned for (``conditioning.tuned_respacing``, e.g. ``ddim100``): ``t_div`` and a numeric
    ``scale`` count steps, so a config tuned at 100 steps can fall below the blurred input at 20.
    ``num_steps``: the respaced sampler's ``num_timesteps``. Also warns when the step counts agree
    but one of the two respacings is a low-noise grid (``sigma<N>max<S>``) and they differ.
    Returns whether it warned.
    Raises ValueError for a ``tuned_respacing`` that is not a valid respacing."""
    from guided_diffusion.respace import get_named_beta_schedule, space_timesteps
    tuned = conditioning.get("tuned_respacing")
    if tuned in (None, ""):
        return False
    steps = diffusion_cfg.get("steps", 1000)
    try:
        betas = get_named_beta_schedule(diffusion_cfg.get("noise_schedule", "linear"), steps)
        tuned_steps = len(space_timesteps(steps, tuned, betas))
    except ValueError as exc:
        raise ConfigError(f"task config: conditioning.tuned_respacing {tuned!r} is not a valid timestep_respacing: "
                          f"{' '.join(str(exc).split())}") from exc
    if tuned_steps == num_steps:
        run = diffusion_cfg.get("timestep_respacing", "")
        grids = [str(r).startswith("sigma") for r in (tuned, run)]
        if any(grids) and str(tuned) != str(run):
            log.warning("task config tuned on time grid %s but this run uses %s (same %d steps): the values may "
                        "not fit this grid", tuned, run, num_steps)
            return True
        return False
    params = conditioning.get("params") or {}
    hint = ("; scale: auto adapts the step size to the respacing"
            if "scale" in params and params.get("scale") != "auto" else "")
    log.warning("task config tuned for timestep_respacing %s (%d steps) but this run takes %d steps (%s): "
                "step sizes and step-counted parameters (%s) may not fit, results may be much worse%s", tuned,
                tuned_steps, num_steps, diffusion_cfg.get("timestep_respacing", ""),
                ", ".join(sorted(params)) or "none", hint)
    return True


@dataclass
class Problem:
    """The cheap parts of a run, built and checked before the model loads (``physics`` owns
    ``operator`` and ``noiser``). ``dataset`` is a :class:`util.measurement_io.MeasurementFolder`
    in measurement mode; ``fixed_params`` the config's fixed kernel (s, s) or mask (H, W) for
    every image, or None."""
    operator: Any
    noiser: Any
    solver: Any
    sampler: Any
    dataset: Any
    image_shape: tuple[int, int, int]
    physics: Any = None
    fixed_params: Any = None


def operator_kwargs(measurement: Mapping[str, Any]) -> tuple[str, dict]:
    """(name, keyword arguments) of the operator of a ``measurement`` config section.

    The paper's original inpainting configs keep the mask options in ``measurement.mask_opt``;
    they are merged into the operator's arguments (the operator's own keys win)."""
    op = dict(measurement["operator"])
    name = op.pop("name")
    mask_opt = measurement.get("mask_opt")
    if mask_opt:
        if not isinstance(mask_opt, dict):
            raise ConfigError("task config: measurement.mask_opt must be a mapping")
        op = {**mask_opt, **op}
    return name, op


def build_measurement(measurement: Mapping[str, Any], device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(operator, noiser) from the task config's ``measurement`` section.

    A missing ``noise`` section means noiseless measurements (noise ``clean``, σ_n = 0, when
    that noise is registered), announced by one warning line (the paper's own IMAGENET DDPM
    inpainting config has no noise section, while its other configs use σ_n = 0.05). A fixed
    user ``kernel`` / ``mask`` file in the operator section is left out here (see
    :func:`fixed_params`); a kernel sets ``kernel_size``. Raises ValueError for unknown names or
    arguments (listing valid ones)."""
    from operators import get_noise, get_operator, list_noises
    from util.measurement_io import split_fixed
    name, kwargs = operator_kwargs(measurement)
    kwargs, _, _ = split_fixed(name, kwargs)
    operator = get_operator(name, device=device, **kwargs)
    noise = measurement.get("noise")
    if noise is None:
        if "clean" not in list_noises():
            raise ConfigError("task config: measurement.noise is missing; valid noise names: "
                              + ", ".join(list_noises()))
        noise = {"name": "clean"}
        log.warning("task config has no measurement.noise section: measuring without noise (sigma_n = 0); "
                    "add e.g. noise: {name: gaussian, sigma: 0.05} for noisy measurements")
    noise = dict(noise)
    noiser = get_noise(noise.pop("name"), **noise)
    return operator, noiser


def build_physics(measurement: Mapping[str, Any], device: str | torch.device = "cpu") -> Any:
    """``operators.Physics`` of the task config's ``measurement`` section (see
    :func:`build_measurement`): ``LinearPhysics`` for a linear operator (``operators.make_physics``)."""
    from operators import make_physics
    return make_physics(*build_measurement(measurement, device))


def fixed_params(measurement: Mapping[str, Any], shape: tuple[int, int, int]) -> Any:
    """The fixed user kernel ((s, s) float64, sum 1) or mask ((H, W) of 0/1) named by
    ``measurement.operator.kernel`` / ``.mask``, for images of (C, H, W) = ``shape``; None when
    the operator draws its own. Raises util.measurement_io.MeasurementError (a ValueError)."""
    from util.measurement_io import fixed_mask, split_fixed
    name, kwargs = operator_kwargs(measurement)
    _, kernel, mask_path = split_fixed(name, kwargs)
    if mask_path is not None:
        return fixed_mask(mask_path, (shape[1], shape[2]))
    return kernel


def build_solver(conditioning: Mapping[str, Any], physics: Any = None) -> Any:
    """The method of the task config's ``conditioning`` section (``method`` and ``params``),
    checked against ``physics`` when given (``Solver.check``). Raises ValueError for an unknown
    method or parameter (listing valid ones) or a physics the method cannot use."""
    from solvers import get_solver
    solver = get_solver(conditioning["method"], **dict(conditioning.get("params") or {}))
    if physics is not None:
        solver.check(physics)
    return solver


def build_sampler(diffusion_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any] | None = None) -> Any:
    """``create_sampler(**diffusion_cfg)`` on the schedule of the prior of ``model_cfg``
    (``priors.build_sampler``: a diffusers checkpoint's or the Gaussian mixture's own β; the
    default guided_diffusion takes the diffusion config's). Raises ValueError for unknown keys
    or values."""
    if model_cfg is None:
        return create_sampler(**dict(diffusion_cfg))
    import priors
    return priors.build_sampler(model_cfg, diffusion_cfg)


def build_dataset(data: Mapping[str, Any], shape: tuple[int, int, int]) -> ImageDataset:
    """The test images of the task config's ``data`` section at (C, H, W) = ``shape``.
    Raises DataError for an unknown name, missing root or a root without images."""
    data = dict(data)
    name, root = data.pop("name"), data.pop("root", None)
    if root is None:
        raise ConfigError("task config: data.root is missing (a folder of images or an .npz file)")
    return get_dataset(name, root=root, image_size=shape[1], channels=shape[0], **data)


def dry_run_operator(physics: Any, shape: tuple[int, int, int], seed: int,
                     device: str | torch.device = "cpu") -> None:
    """Draw the operator's random parameters for one image of ``shape`` and measure a zero
    image (``physics.measure``), so that a kernel larger than the image or a wrong ``in_shape``
    fails now. Raises ValueError with a one-line message."""
    x = torch.zeros((1, *shape), device=device)
    try:
        physics.measure(x, numpy_rngs(seed, [0], STREAM_OPERATOR), torch_generators(seed, [0], STREAM_NOISE))
    except RuntimeError as exc:   # shape mismatches inside torch
        raise ValueError(f"operator {physics.name!r} cannot measure {tuple(x.shape)} images: "
                         f"{' '.join(str(exc).split())}") from exc


def build_problem(configs: Mapping[str, Mapping[str, Any]], device: str | torch.device, seed: int,
                  measurement_dir: str | None = None, where: str = "task config") -> Problem:
    """Build and check everything but the model from the configs {"model", "diffusion", "task"}:
    the task layout, the types of the model and diffusion keys, what the sampler can serve
    (:func:`check_servable`), the sampler (on the task's ``conditioning.time_grid``, if any),
    measurement, solver and data.
    With ``measurement_dir`` the images are the measurements of that folder (read and checked
    now, see :mod:`util.measurement_io`) instead of ``task.data``. ``where`` names the task config
    (and the overrides behind it) in the message of a bad method or method parameter.

    Raises ConfigError / DataError / ValueError / FileNotFoundError (one-line messages)."""
    task = configs["task"]
    check_task_layout(task)
    check_config_types(configs["model"], MODEL_KEY_TYPES, "model config")
    check_config_types(configs["diffusion"], DIFFUSION_KEY_TYPES, "diffusion config")
    from priors import DEFAULT_KIND, prior_class
    prior_cls = prior_class(configs["model"])
    if prior_cls.kind == DEFAULT_KIND:
        check_servable(configs["model"], configs["diffusion"])
    else:   # the kind's own checks (its folder, its schedule against the diffusion config)
        prior_cls.check_config(configs["model"], configs["diffusion"])
    shape = image_shape(configs["model"])
    check_speed_settings(configs["model"])
    from guided_diffusion.respace import grid_respacing
    diffusion = dict(configs["diffusion"])     # the method's time grid (idempotent: main.py applied it already)
    diffusion["timestep_respacing"] = grid_respacing(diffusion.get("timestep_respacing", ""),
                                                     task["conditioning"].get("time_grid"))
    sampler = build_sampler(diffusion, configs["model"])
    physics = build_physics(task["measurement"], device)
    try:
        solver = build_solver(task["conditioning"])
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        raise ValueError(f"{where}: conditioning: {msg}") from None
    warn_untuned_respacing(task["conditioning"], diffusion, sampler.num_timesteps)
    fixed = fixed_params(task["measurement"], shape)
    dry_run_operator(physics, shape, seed, device)
    solver.check(physics)
    if measurement_dir is not None:
        from util.measurement_io import MeasurementFolder
        dataset = MeasurementFolder(measurement_dir, physics.operator, shape, fixed)
    else:
        dataset = build_dataset(task["data"], shape)
    return Problem(physics.operator, physics.noiser, solver, sampler, dataset, shape, physics, fixed)


def check_speed_settings(model_cfg: Mapping[str, Any]) -> None:
    """Check the model config's ``use_fp16``, ``channels_last`` and ``compile`` (true, false or
    auto; absent = auto) before the model loads. Raises ValueError naming the key."""
    from guided_diffusion.precision import parse_setting
    for key in ("use_fp16", "channels_last", "compile"):
        parse_setting(model_cfg.get(key, "auto"), key)


def _with_defaults(fn, given: Mapping[str, Any], exclude: tuple[str, ...] = ("self", "device")) -> dict:
    """The keyword arguments ``fn`` runs with when called with ``given``, in ``fn``'s order:
    every parameter's default, overridden by ``given``."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in exclude and \
                (p.name in given or p.default is not p.empty):
            out[p.name] = given.get(p.name, p.default)
    out.update({k: v for k, v in given.items() if k not in out})
    return out


def resolved_config(configs: Mapping[str, Mapping[str, Any]], problem: Problem,
                    device: str | torch.device = "cpu") -> dict:
    """Every parameter a run uses, defaults included, for summary.json (the configs as written
    leave out defaulted keys such as ``eta``, ``t_div`` or ``div_ratio``).

    Returns {"model": create_model's keyword arguments (with ``channels_last_used``, the memory
    layout ``channels_last`` gives on ``device``), "diffusion": create_sampler's (``eta``
    only for DDIM) with ``num_steps`` (network evaluations per image), "solver": {"method",
    "params": every parameter of the solver class as the instance holds it}, "operator": the
    operator's constructor arguments with ``name``, "noise": the noise model's with ``name`` and
    the σ used (on [-1, 1]), "data": the data section with the image size and channels}."""
    from priors import DEFAULT_KIND, prior_class
    prior_cls = prior_class(configs["model"])
    if prior_cls.kind == DEFAULT_KIND:
        model = _with_defaults(create_model, configs["model"])
        model.pop("unused", None)
        model["kind"] = DEFAULT_KIND
        model["channels_last_used"] = resolve_channels_last(model.get("channels_last", "auto"), device)
    else:
        model = prior_cls.resolved(configs["model"])
    diffusion = _with_defaults(create_sampler, configs["diffusion"])
    if diffusion.get("sampler") != "ddim":
        diffusion.pop("eta", None)
    diffusion["num_steps"] = int(problem.sampler.num_timesteps)
    solver = problem.solver
    params = {k: getattr(solver, k, spec.default) for k, spec in type(solver).params.items()}
    measurement = configs["task"]["measurement"]
    op_name, op_kwargs = operator_kwargs(measurement)
    operator = {"name": op_name, **_with_defaults(type(problem.operator).__init__, op_kwargs)}
    noise_cfg = dict(measurement.get("noise") or {"name": "clean"})
    noise_name = noise_cfg.pop("name")
    noise = {"name": noise_name, **_with_defaults(type(problem.noiser).__init__, noise_cfg),
             "sigma": getattr(problem.noiser, "sigma", None)}
    channels, size, _ = problem.image_shape
    data = {**dict(configs["task"]["data"]), "image_size": size, "channels": channels}
    return {"model": model, "diffusion": diffusion,
            "solver": {"method": configs["task"]["conditioning"]["method"], "params": params},
            "operator": operator, "noise": noise, "data": data}


def build_prior(model_cfg: Mapping[str, Any], device: str | torch.device) -> Any:
    """The run's ``priors.Prior`` of ``model_cfg`` (``kind`` chooses it; guided_diffusion: the
    UNet of :func:`build_model`, bit-identical). Raises FileNotFoundError for a missing
    checkpoint (saying where it is published), ConfigError / ValueError for bad keys."""
    import priors
    return priors.build_prior(model_cfg, device)


def build_model(model_cfg: Mapping[str, Any], device: str | torch.device) -> torch.nn.Module:
    """``create_model(**model_cfg, device=device)`` in eval mode, its precision, memory layout and
    compilation chosen for the machine where ``auto`` (recorded in ``model.speed_settings``, see
    guided_diffusion/precision.py); a config without ``use_fp16`` means ``auto``. Raises FileNotFoundError for a missing checkpoint (saying
    where it is published), ValueError for bad keys or a mismatch."""
    cfg = dict(model_cfg)
    cfg.setdefault("use_fp16", "auto")   # a run's default; create_model's own is fp32
    return create_model(**cfg, device=device)
