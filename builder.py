"""Turn the three configs (model, diffusion, task) into the objects of a run: first one resolved
run specification (:class:`RunSpec`, :func:`build_spec`: the method's table composed in
(:func:`compose_conditioning`), the time grid as a list of timesteps, the tuned values applied),
then from it the sampler, the measurement operator and noise, the solver and the test images
(:func:`build_problem`), and the network (:func:`build_model`). Downstream code (runner,
``restore.restore``) takes these objects, not config dicts.

Everything cheap is built and checked first, so that a bad name, key or value fails before the
(large) model loads."""
from __future__ import annotations

import copy
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from data.dataloader import ImageDataset, get_dataset
from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.unet import create_model, resolve_channels_last
from util.config import ConfigError, check_task_layout, load_yaml
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


def slug(name: str) -> str:
    """File-name form of a method's name: ``"CoDPS+"`` -> ``"codps_plus"``, ``"RED-diff"`` ->
    ``"red_diff"`` (lower case, ``+`` spelled out, other symbols ``_``)."""
    import re
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("+", "_plus")).strip("_")


def solver_class(name: str) -> type:
    """The registered class of method ``name`` (case-insensitive; aliases give the same class).
    Raises ValueError (listing the registered names) for an unknown one."""
    from solvers.base import list_methods, list_solvers
    for cls in list_methods():
        if any(n.lower() == str(name).lower() for n in cls.names):
            return cls
    raise ValueError(f"unknown method {name!r}; registered: {', '.join(list_solvers())}")


def method_table_path(task_path: str, method: str) -> str:
    """Path of method ``method``'s table for the dataset of the task config at ``task_path``:
    ``<task config folder>/../methods/<slug>.yaml`` (``CoDPS+`` -> ``codps_plus.yaml``; aliases
    resolve to the method's first registered name). Raises ValueError for an unknown method."""
    name = solver_class(method).names[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(task_path))), "methods", f"{slug(name)}.yaml")


def compose_conditioning(conditioning: Mapping[str, Any], task_path: str | None) -> dict:
    """The conditioning a composed task config runs with (issue 22, docs/framework.md "Configs").

    A composed task config names its default method and its task
    (``conditioning: {method: DDRM, task: motion_deblur}``); the method's values come from its
    table ``configs/<dataset>/methods/<method>.yaml`` (:func:`method_table_path`): the table's
    ``defaults`` under the task entry's ``params``, and the entry's ``tuned``,
    ``tuned_respacing`` and ``time_grid``. Values in ``conditioning`` itself (a command-line
    ``task.conditioning.params.scale=0.1`` or ``task.conditioning.time_grid=...``) win. A method
    without a table, or whose table has no entry for the task, runs with its class defaults
    under the explicit values (one warning line). An old-layout ``conditioning`` (no ``task``)
    is returned as it is (a copy).

    Returns a conditioning mapping ({"method", "params", "tuned"?, "tuned_respacing"?,
    "time_grid"?, "task"}). Raises ConfigError for an unreadable table or one of another method."""
    cond = copy.deepcopy(dict(conditioning))
    task = cond.get("task")
    if task is None:
        return cond
    if task_path is None:
        raise ConfigError("task config: conditioning.task needs the task config's path to find the method tables")
    method = cond["method"]
    try:
        path = method_table_path(task_path, method)
    except ValueError:
        return cond   # build_solver names the valid methods
    entry, defaults = {}, {}
    if os.path.isfile(path):
        table = load_yaml(path, "method table")
        if not isinstance(table.get("tasks"), dict) or "method" not in table or \
                solver_class(str(table["method"])) is not solver_class(method):
            raise ConfigError(f"method table {path}: needs method: {method} and a tasks mapping")
        defaults = dict(table.get("defaults") or {})
        entry = table["tasks"].get(task)
        if entry is None:
            log.warning("%s has no entry for task %s: running %s with its defaults (tune it: python -m "
                        "benchmarks.tune --method %s --task %s --apply)", path, task, method, method, task)
            entry = {}
    elif method.lower() != "none":
        log.warning("no method table %s: running %s with its class defaults on task %s", path, method, task)
    out = {"method": method, "task": task, "params": {**defaults, **dict(entry.get("params") or {}),
                                                     **dict(cond.get("params") or {})}}
    for key in ("tuned", "tuned_respacing", "time_grid"):
        if key in cond:
            out[key] = cond[key]
        elif key in entry:
            out[key] = copy.deepcopy(entry[key])
    return out


@dataclass
class RunSpec:
    """The resolved specification of a run, built once by :func:`build_spec` from the configs,
    the overrides and the flags; everything downstream takes it (recorded in summary.json as
    ``spec``, :meth:`to_json`).

    Attributes:
        model: the model config (``create_model``'s keyword arguments as given).
        diffusion: the diffusion config with ``timestep_respacing`` set to :attr:`respacing`.
        respacing: the name of the time grid (``ddim100``, ``"250"``, ``sigma100max1.5``), the
            key of the method's tuned table; :attr:`timesteps` is the grid itself.
        timesteps: the original-process timesteps the sampler visits, ascending (len = steps).
        method: the method's name; params: every parameter given to it (table defaults, task
            entry, tuned values for this respacing, command line; the solver's own defaults for
            the rest: ``resolved_config``).
        conditioning: the composed conditioning (with ``tuned`` applied) as the run uses it.
        tuned_from: where the method's values came from (a method table and task, or the task
            config), for the record.
        measurement, data: the task config's sections; metrics: its ``metrics`` section
            ({} when absent: ``lpips_net`` alex; util.metrics.metrics_options).
        task_path: the task config's path ("" when built from dicts); task_method: the method
            the task config file names (its default; "" when unknown).
        device: where tensors go; threads: torch's intra-op threads (None: not set here).
    """
    model: dict
    diffusion: dict
    respacing: str
    timesteps: list
    method: str
    params: dict
    conditioning: dict
    measurement: dict
    data: dict
    metrics: dict = field(default_factory=dict)
    tuned_from: str = ""
    task_path: str = ""
    task_method: str = ""
    device: str = "cpu"
    threads: int | None = None

    @property
    def configs(self) -> dict:
        """The three configs as this run resolved them ({"model", "diffusion", "task"}; the task's
        conditioning composed and tuned)."""
        task = {"conditioning": self.conditioning, "data": self.data, "measurement": self.measurement}
        if self.metrics:
            task["metrics"] = self.metrics
        return {"model": self.model, "diffusion": self.diffusion, "task": task}

    def to_json(self) -> dict:
        """A JSON-able dict of the specification (summary.json's ``spec``)."""
        from dataclasses import asdict
        out = asdict(self)
        out["num_steps"] = len(self.timesteps)
        return out


def build_spec(configs: Mapping[str, Mapping[str, Any]], applied: Mapping[str, Any] | None = None,
               task_path: str | None = None, original_method: str | None = None,
               device: str | torch.device = "cpu", threads: int | None = None,
               where: str = "task config") -> RunSpec:
    """Resolve the configs (overrides already applied; ``applied``: {dotted key: value} of the
    command line) into a :class:`RunSpec`, checking the task layout once.

    The method's values: :func:`compose_conditioning` (composed task configs); for an old-layout
    task config whose ``conditioning.method`` was overridden (``original_method``: the file's
    method), the file's params / tuned values / time grid belong to the other method and are
    dropped (only command-line ones are kept). Then the method's time grid
    (``conditioning.time_grid``) is put on the diffusion config's step count, once, as a list of
    timesteps, and the tuned values for that grid are applied under command-line ones.

    Raises ConfigError / ValueError (one line) for a bad layout, table, time grid or respacing."""
    from guided_diffusion.respace import get_named_beta_schedule, grid_respacing, space_timesteps
    from util.config import apply_tuned, check_task_layout, overridden_params
    applied = dict(applied or {})
    task = copy.deepcopy(dict(configs["task"]))
    check_task_layout(task, where)
    cond = dict(task["conditioning"])
    if "task" not in cond and original_method is not None and _other_method(cond["method"], original_method):
        kept = {k[len("task.conditioning."):].split(".")[0] for k in applied if k.startswith("task.conditioning.")}
        dropped = sorted(k for k in cond if k not in kept and k != "method")
        params = {k: v for k, v in (cond.get("params") or {}).items() if k in overridden_params(applied)}
        cond = {k: v for k, v in cond.items() if k in kept or k == "method"}
        if params or "params" in cond:
            cond["params"] = params
        if dropped:
            log.info("method %s replaces the config's %s: its %s are not used", cond["method"], original_method,
                     ", ".join(dropped))
    composed = compose_conditioning(cond, task_path)
    tuned_from = (f"{method_table_path(task_path, composed['method'])} [{composed['task']}]"
                  if "task" in composed and _known(composed["method"]) else (task_path or "task config"))
    diffusion = dict(configs["diffusion"])
    respacing = grid_respacing(diffusion.get("timestep_respacing", ""), composed.get("time_grid"))
    diffusion["timestep_respacing"] = respacing
    explicit = overridden_params(applied) | (set(cond.get("params") or {}) if "task" in cond else set())
    task["conditioning"] = composed
    task = apply_tuned(task, respacing, keep=explicit)   # logs the values it applies
    try:
        betas = get_named_beta_schedule(diffusion.get("noise_schedule", "linear"), diffusion.get("steps", 1000))
        timesteps = [int(t) for t in space_timesteps(len(betas), respacing, betas)]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"diffusion config: timestep_respacing {respacing!r}: {' '.join(str(exc).split())}") from None
    cond = task["conditioning"]
    return RunSpec(model=dict(configs["model"]), diffusion=diffusion, respacing=str(respacing), timesteps=timesteps,
                   method=cond["method"], params=dict(cond.get("params") or {}), conditioning=cond,
                   measurement=task["measurement"], data=task["data"], metrics=dict(task.get("metrics") or {}),
                   tuned_from=tuned_from,
                   task_path=task_path or "", task_method=str(original_method or ""), device=str(device),
                   threads=threads)


def _known(method: str) -> bool:
    try:
        solver_class(method)
    except ValueError:
        return False
    return True


def _other_method(method: str, original: str) -> bool:
    """Whether ``method`` is another method than ``original`` (aliases are the same method)."""
    try:
        return solver_class(method) is not solver_class(original)
    except ValueError:   # an unknown name: build_solver refuses it, listing the valid ones
        return False


@dataclass
class Problem:
    """The cheap parts of a run, built and checked before the model loads (``physics`` owns
    ``operator`` and ``noiser``; ``spec`` the :class:`RunSpec` it was built from). ``dataset`` is a :class:`util.measurement_io.MeasurementFolder`
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
    spec: Any = None


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


def build_problem(spec: "RunSpec | Mapping[str, Mapping[str, Any]]", device: str | torch.device, seed: int,
                  measurement_dir: str | None = None, where: str = "task config") -> Problem:
    """Build and check everything but the model from a :class:`RunSpec` (or, for callers with
    configs {"model", "diffusion", "task"}, the spec :func:`build_spec` makes of them): the types
    of the model and diffusion keys, what the sampler can serve (:func:`check_servable`), the
    sampler on the spec's timesteps, measurement, solver and data.
    With ``measurement_dir`` the images are the measurements of that folder (read and checked
    now, see :mod:`util.measurement_io`) instead of ``task.data``. ``where`` names the task config
    (and the overrides behind it) in the message of a bad method or method parameter.

    Raises ConfigError / DataError / ValueError / FileNotFoundError (one-line messages)."""
    if not isinstance(spec, RunSpec):
        spec = build_spec(spec, device=device)
    check_config_types(spec.model, MODEL_KEY_TYPES, "model config")
    check_config_types(spec.diffusion, DIFFUSION_KEY_TYPES, "diffusion config")
    from priors import DEFAULT_KIND, prior_class
    prior_cls = prior_class(spec.model)
    if prior_cls.kind == DEFAULT_KIND:
        check_servable(spec.model, spec.diffusion)
    else:   # the kind's own checks (its folder, its schedule against the diffusion config)
        prior_cls.check_config(spec.model, spec.diffusion)
    shape = image_shape(spec.model)
    check_speed_settings(spec.model)
    sampler = build_sampler({**spec.diffusion, "timestep_respacing": list(spec.timesteps)}, spec.model)
    physics = build_physics(spec.measurement, device)
    try:
        solver = build_solver({"method": spec.method, "params": spec.params})
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        raise ValueError(f"{where}: conditioning: {msg}") from None
    warn_untuned_respacing(spec.conditioning, spec.diffusion, sampler.num_timesteps)
    fixed = fixed_params(spec.measurement, shape)
    dry_run_operator(physics, shape, seed, device)
    solver.check(physics)
    if measurement_dir is not None:
        from util.measurement_io import MeasurementFolder
        dataset = MeasurementFolder(measurement_dir, physics.operator, shape, fixed)
    else:
        dataset = build_dataset(spec.data, shape)
    return Problem(physics.operator, physics.noiser, solver, sampler, dataset, shape, physics, fixed, spec)


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
