"""Reading the three YAML configs (model, diffusion, task) and applying ``section.key=value``
command-line overrides to them, with the checks that let a bad key or value fail before any
model loads.

YAML is read with a safe loader that also accepts the ``!!python/tuple`` tag (the paper's task
configs use it for ranges) and reads exponent numbers without a dot (``1e3``, ``5e2``, ``1e-2``,
which PyYAML's YAML 1.1 resolver leaves as strings) as floats. No other Python object is
constructed.
"""
from __future__ import annotations

import copy
import logging
import re
from typing import Any, Iterable, Mapping

import yaml

log = logging.getLogger(__name__)

#: The config sections an override can address, and the option that names each file.
SECTIONS = ("model", "diffusion", "task")

#: Keys whose value may be a number, a comma-separated string or a list
#: (e.g. ``attention_resolutions: 16`` or ``"32,16,8"``, ``timestep_respacing: 1000`` or ``ddim100``).
FLEXIBLE_KEYS = frozenset({"channel_mult", "attention_resolutions", "timestep_respacing"})

#: Keys whose value may be a string or a mapping (``time_grid: uniform`` or ``{sigma_max: 2}``).
GRID_KEYS = frozenset({"time_grid"})

#: The task config's fixed layout (the DPS / CoDPS code's): section -> allowed keys, where
#: ``None`` means "keyword arguments of a component, checked by that component when it is built".
TASK_LAYOUT: dict[str, Any] = {
    "conditioning": {"method": str, "task": str, "params": None, "tuned": None, "tuned_respacing": None,
                     "time_grid": None},
    "data": None,
    "measurement": {"operator": None, "noise": None, "mask_opt": None},
    "metrics": None,   # optional, checked by util.metrics.metrics_options (lpips_net: vgg | alex)
}

#: The value that may replace a number or a bool (and be replaced by one) in an override, e.g.
#: ``task.conditioning.params.scale=auto`` or ``model.channels_last=auto``; the component that
#: reads the key decides whether ``auto`` is valid there.
AUTO = "auto"

_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class ConfigError(ValueError):
    """A config file is missing, unreadable or malformed, or an override is invalid.

    The message is one line meant for the user (``main.py`` prints it and exits with status 2)."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` + ``!!python/tuple`` + exponent floats without a dot (``1e3``)."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are all distinct: YAML 1.2 forbids a repeated key, which PyYAML would
    silently resolve to the last value. Raises yaml.constructor.ConstructorError naming the key
    and both lines."""
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"repeated key {key!r} (first on line {seen[key] + 1}, again on line "
                            f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        seen.setdefault(key, key_node.start_mark.line)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)
ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


def parse_value(text: str) -> Any:
    """Parse one override value as a YAML scalar (or flow list) with :class:`ConfigLoader`.

    ``"1e3"`` -> 1000.0, ``"true"`` -> True, ``"ddim50"`` -> ``"ddim50"``, ``"[0.5, 0.6]"`` -> [0.5, 0.6],
    ``""`` -> ``""``. Raises ConfigError when the text is not valid YAML."""
    if text.strip() == "":
        return ""
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {text!r}: {_one_line(exc)}") from exc


def load_yaml(path: str, what: str = "config") -> dict:
    """Read a YAML mapping from ``path`` with :class:`ConfigLoader`.

    Raises ConfigError (one line) when the file is missing, a folder, unreadable, not valid YAML,
    repeats a key in one mapping (PyYAML would keep the last value silently), or does not hold a
    mapping. An empty file gives ``{}``."""
    if not path:
        raise ConfigError(f"{what}: no file given")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=ConfigLoader)
    except IsADirectoryError as exc:
        raise ConfigError(f"{what} {path!r} is a folder; expected a YAML file") from exc
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path!r} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path!r} cannot be read: {_one_line(exc)}") from exc
    except yaml.YAMLError as exc:
        if "repeated key" in str(exc):
            raise ConfigError(f"{what} {path!r}: {_one_line(exc)}") from exc
        raise ConfigError(f"{what} {path!r} is not valid YAML (or uses an unsupported tag): {_one_line(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _kind(value: Any) -> str:
    """Coarse type of a config value: bool, number, str, sequence, mapping or none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "sequence"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _coerce(key: str, old: Any, new: Any, where: str) -> Any:
    """Check that ``new`` may replace ``old`` (same kind, a flexible key, or :data:`AUTO` in
    place of a number or bool and back) and return it in ``old``'s container type (a list
    replacing a tuple becomes a tuple). Raises ConfigError."""
    if key in FLEXIBLE_KEYS and _kind(new) in ("number", "str", "sequence"):
        return new
    if key in GRID_KEYS and _kind(new) in ("str", "mapping"):   # checked by check_task_layout
        return new
    ok, nk = _kind(old), _kind(new)
    if AUTO in (old, new) and {ok, nk} <= {"number", "bool", "str"}:   # scale: auto <-> 0.1; the component checks
        return new
    if ok == "none" or ok == nk:
        if isinstance(old, tuple) and isinstance(new, list):
            return tuple(new)
        return new
    raise ConfigError(f"override {where}={new!r}: expected a {ok} value like the current {old!r}, got a {nk}")


def set_override(configs: dict[str, dict], assignment: str,
                 valid_keys: Mapping[str, Iterable[str]] | None = None) -> tuple[str, Any]:
    """Apply one ``section.key[.subkey...]=value`` assignment to ``configs`` in place.

    Args:
        configs: {"model": {...}, "diffusion": {...}, "task": {...}}.
        assignment: e.g. ``task.conditioning.params.scale=0.1`` or ``diffusion.timestep_respacing=ddim50``.
        valid_keys: for "model" and "diffusion", the keys their builder accepts; a key not in the
            config file but listed here may be added. Task keys follow :data:`TASK_LAYOUT`; keys of
            the components (solver params, operator and noise kwargs, data options) may be added
            and are checked by the component when it is built, before the model loads.
    Returns:
        (dotted key, parsed value).
    Raises:
        ConfigError naming the valid keys for an unknown section or key, or the expected kind
        of value for a value of the wrong type (a number for a string key, ...).
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form section.key=value "
                          f"(sections: {', '.join(SECTIONS)})")
    dotted, text = assignment.split("=", 1)
    dotted = dotted.strip()
    parts = dotted.split(".")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"override {dotted!r}: unknown section {parts[0]!r}; valid sections: {', '.join(SECTIONS)}")
    if len(parts) < 2 or any(p == "" for p in parts):
        raise ConfigError(f"override {dotted!r}: give a key after the section, e.g. {parts[0]}.<key>=value")
    value = parse_value(text)
    section = parts[0]
    node = configs.setdefault(section, {})
    layout: Any = TASK_LAYOUT if section == "task" else None
    free = section != "task"   # below a free node, new keys are allowed (checked later by components)
    for depth, key in enumerate(parts[1:]):
        last = depth == len(parts) - 2
        where = ".".join(parts[:depth + 2])
        if isinstance(layout, dict):
            if key not in layout:
                raise ConfigError(f"override {where!r}: unknown key {key!r}; valid keys: {', '.join(sorted(layout))}")
            layout = layout[key]
            free = layout is None
        elif section in ("model", "diffusion") and depth == 0 and valid_keys and section in valid_keys:
            allowed = set(valid_keys[section]) | set(node)
            if key not in allowed:
                raise ConfigError(f"override {where!r}: unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}")
        elif not free and key not in node:
            raise ConfigError(f"override {where!r}: unknown key {key!r}; valid keys: {', '.join(sorted(node))}")
        if last:
            if key in node:
                value = _coerce(key, node[key], value, where)
            node[key] = value
            return dotted, value
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {where} is a {_kind(child)} value, not a section with keys")
        node = child
    raise AssertionError("unreachable")


def apply_overrides(configs: dict[str, dict], assignments: Iterable[str],
                    valid_keys: Mapping[str, Iterable[str]] | None = None) -> tuple[dict[str, dict], dict[str, Any]]:
    """Return a deep copy of ``configs`` with every assignment applied (see :func:`set_override`)
    and the {dotted key: value} overrides applied, in order. Raises ConfigError."""
    out = copy.deepcopy(configs)
    applied: dict[str, Any] = {}
    for assignment in assignments:
        key, value = set_override(out, assignment, valid_keys)
        applied[key] = value
    return out, applied


def check_task_layout(task: Mapping[str, Any], path: str = "task config") -> None:
    """Check a task config against :data:`TASK_LAYOUT`: the sections ``conditioning`` (with
    ``method``), ``data`` (with ``name``) and ``measurement`` (with ``operator`` holding ``name``)
    must be present and no unknown section may appear. ``conditioning.tuned_respacing``
    (optional, ours: the ``timestep_respacing`` the params were tuned at, e.g. ``ddim100``) must
    be a string or an integer; ``conditioning.task`` (optional, ours: a composed task config, see
    ``builder.compose_conditioning``) a task name; ``conditioning.time_grid`` (optional, ours) ``uniform`` or
    ``{sigma_max: S}`` (see ``guided_diffusion.respace.grid_respacing``). Raises ConfigError
    listing valid keys."""
    for key in task:
        if key not in TASK_LAYOUT:
            raise ConfigError(f"{path}: unknown section {key!r}; valid sections: {', '.join(TASK_LAYOUT)}")
    required = [("conditioning", "method"), ("data", "name"), ("measurement", "operator")]
    for section, key in required:
        sub = task.get(section)
        if not isinstance(sub, dict) or key not in sub:
            raise ConfigError(f"{path}: missing {section}.{key}")
    for key in task["conditioning"]:
        if key not in TASK_LAYOUT["conditioning"]:
            raise ConfigError(f"{path}: unknown key conditioning.{key}; valid keys: "
                              f"{', '.join(TASK_LAYOUT['conditioning'])}")
    for key in task["measurement"]:
        if key not in TASK_LAYOUT["measurement"]:
            raise ConfigError(f"{path}: unknown key measurement.{key}; valid keys: operator, noise")
    op = task["measurement"]["operator"]
    if not isinstance(op, dict) or "name" not in op:
        raise ConfigError(f"{path}: measurement.operator must be a mapping with a name")
    noise = task["measurement"].get("noise")
    if noise is not None and (not isinstance(noise, dict) or "name" not in noise):
        raise ConfigError(f"{path}: measurement.noise must be a mapping with a name")
    params = task["conditioning"].get("params")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{path}: conditioning.params must be a mapping")
    tuned = task["conditioning"].get("tuned")
    if tuned is not None and (not isinstance(tuned, dict) or not all(isinstance(v, dict) for v in tuned.values())):
        raise ConfigError(f"{path}: conditioning.tuned must map a timestep_respacing (e.g. ddim20) to a mapping "
                          "of parameters")

    from guided_diffusion.respace import check_time_grid
    try:
        check_time_grid(task["conditioning"].get("time_grid"))
    except ValueError as exc:
        raise ConfigError(f"{path}: {str(exc).replace('task config: ', '')}") from None
    name = task["conditioning"].get("task")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"{path}: conditioning.task must be a task name (an entry of the method tables "
                          f"configs/<dataset>/methods/<method>.yaml, e.g. motion_deblur), got {name!r}")
    tuned = task["conditioning"].get("tuned_respacing")
    if tuned is not None and (isinstance(tuned, bool) or not isinstance(tuned, (str, int))):
        raise ConfigError(f"{path}: conditioning.tuned_respacing must be a timestep_respacing like ddim100 or "
                          f"250, got {tuned!r}")


def apply_tuned(task: Mapping[str, Any], respacing: Any, keep: Iterable[str] = ()) -> dict:
    """The task config as it runs at ``timestep_respacing`` = ``respacing``: a deep copy with
    ``conditioning.tuned[respacing]`` (the values ``python -m benchmarks.tune --apply`` chose for
    that step count) merged into ``conditioning.params``, and ``tuned`` removed.

    Args:
        task: a task config; ``conditioning.tuned`` (optional) maps respacings (``ddim20``,
            ``"250"``; keys compare as strings) to parameter mappings.
        respacing: the diffusion config's ``timestep_respacing`` (str or int).
        keep: parameter names set explicitly (e.g. on the command line); they are not replaced.

    Returns:
        The resolved task config, with ``conditioning.tuned_respacing`` set to ``respacing``
        when an entry was applied. When ``tuned`` exists but has no entry for ``respacing``,
        ``params`` are used as they are and one warning line says so (here, or, when the config
        records ``tuned_respacing``, in ``builder.warn_untuned_respacing``).

    Raises:
        ConfigError: ``tuned`` is not a mapping of mappings.

    Example:
        >>> cfg = {"conditioning": {"method": "CoDPS+", "params": {"scale": 0.2, "t_div": 15},
        ...                         "tuned": {"ddim20": {"scale": 0.5, "t_div": 3}}}}
        >>> apply_tuned(cfg, "ddim20")["conditioning"]
        {'method': 'CoDPS+', 'params': {'scale': 0.5, 't_div': 3}, 'tuned_respacing': 'ddim20'}
        >>> apply_tuned(cfg, "ddim20", keep=["scale"])["conditioning"]["params"]
        {'scale': 0.2, 't_div': 3}
    """
    out = copy.deepcopy(dict(task))
    cond = out.get("conditioning")
    if not isinstance(cond, dict) or cond.get("tuned") is None:
        return out
    cond = out["conditioning"] = dict(cond)
    tuned = cond.pop("tuned")
    if not isinstance(tuned, dict) or not all(isinstance(v, dict) for v in tuned.values()):
        raise ConfigError("task config: conditioning.tuned must map a timestep_respacing to a mapping of parameters")
    table = {str(k): v for k, v in tuned.items()}
    entry = table.get(str(respacing))
    if entry is None:
        if cond.get("tuned_respacing") is not None:
            return out   # builder.warn_untuned_respacing says it, once
        log.warning("task config has tuned values for timestep_respacing %s but not for %s; using "
                    "conditioning.params as they are (step-counted values such as t_div may not fit)",
                    ", ".join(table), respacing)
        return out
    keep = set(keep)
    params = dict(cond.get("params") or {})
    params.update({k: v for k, v in entry.items() if k not in keep})
    cond["params"] = params
    cond["tuned_respacing"] = respacing   # these values were tuned for this step count
    used = [k for k in entry if k not in keep]
    log.info("conditioning.tuned[%s] applied: %s%s", respacing, ", ".join(f"{k}={params[k]}" for k in used) or "nothing",
             f" (command line kept: {', '.join(f'{k}={params[k]}' for k in entry if k in keep)})"
             if any(k in keep for k in entry) else "")
    return out


def overridden_params(applied: Mapping[str, Any]) -> set[str]:
    """Names of the solver parameters among applied overrides (``task.conditioning.params.X``)."""
    prefix = "task.conditioning.params."
    return {k[len(prefix):].split(".")[0] for k in applied if k.startswith(prefix)}
