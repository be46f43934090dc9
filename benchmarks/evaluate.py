"""What the tuner and the leaderboard share: which registered methods have MNIST configs (and in
which sampler folder), how an NFE budget maps to a ``timestep_respacing``, one scored run of a
method on a set of digits, and the on-disk cache that makes both resumable.

Budget = NFE, the network calls per image. A method reports its calls per reverse step as the
class attribute ``nfe_per_step`` (default 1; a method with extra calls sets it, or a callable
``nfe_per_step(params) -> int``); the respacing then has budget / nfe_per_step steps:
``ddim<steps>`` for methods whose configs live in ``configs/MNIST/DDIM``, ``"<steps>"`` (respaced
DDPM) for those in ``configs/MNIST/DDPM``, each put on the time grid the method's task config
declares (``conditioning.time_grid``; e.g. ``sigma<steps>max2``, same steps, same NFE). The NFE the loop counted is recorded with every
result, so a method that miscounts shows up in the tables.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from benchmarks.mnist_common import ROOT, TASKS, config_path, digits, load_prior
from builder import slug  # noqa: F401  (benchmarks name files by it)
from util.config import apply_tuned, load_yaml
from util.metrics import psnr, ssim

log = logging.getLogger(__name__)

#: Sampler folders of configs/MNIST, in order of preference when a method has configs in both.
SAMPLINGS = ("DDIM", "DDPM")
#: The budgets (NFE per image) every method is run at; methods of the DDPM folder add DDPM_BUDGET.
BUDGETS = (20, 50, 100)
DDPM_BUDGET = 250
#: Bump when a change of the evaluation code invalidates cached results.
CACHE_VERSION = 1
#: Task whose CoDPS+ config (configs/MNIST/DDIM/<task>_config.yaml) defines the measurement that
#: every method of the leaderboard and the tuner gets, so that all see the same y.
MEASUREMENT_FOLDER = "DDIM"


@dataclass(frozen=True)
class MethodSpec:
    """A registered method with an MNIST method table (``configs/MNIST/methods/<method>.yaml``).

    Attributes:
        name: its first registered name (e.g. ``"CoDPS+"``).
        sampling: ``"DDIM"`` or ``"DDPM"``, the folder of the diffusion config it is tuned and
            benchmarked with (the table's ``sampling``).
        configs: {task: path of the task config (``configs/MNIST/<sampling>/<task>_config.yaml``)}
            for every task its table has an entry for.
        table: path of its method table.
    """
    name: str
    sampling: str
    configs: Mapping[str, str] = field(default_factory=dict)
    table: str = ""

    @property
    def slug(self) -> str:
        """File-name form of the name: lower case, ``+`` -> ``_plus``, other symbols -> ``_``."""
        return slug(self.name)


def solver_class(name: str) -> type:
    """The registered class of method ``name`` (case-insensitive). Raises ValueError if unknown."""
    from builder import solver_class as cls_of
    return cls_of(name)


def task_of(config_name: str) -> str | None:
    """The MNIST task of a task-config file name (``dps_inpainting_box_config.yaml`` ->
    ``inpainting_box``), or None for model / diffusion / other files."""
    stem = os.path.basename(config_name)
    if not stem.endswith("_config.yaml"):
        return None
    stem = stem[:-len("_config.yaml")]
    for task in sorted(TASKS, key=len, reverse=True):
        if stem == task or stem.endswith("_" + task):
            return task
    return None


def _order(name: str, sampling: str, root: str) -> tuple:
    """Sort key that lists the methods as the old per-method config files did (by folder, then
    file name: the folder's default method as ``<task>_config.yaml``, the others by prefix)."""
    default = (load_yaml(os.path.join(root, "configs", "MNIST", sampling, "gaussian_deblur_config.yaml"),
                         "task config").get("conditioning") or {}).get("method")
    stem = "gaussian_deblur" if default and solver_class(default).names[0] == name else \
        re.sub(r"[^a-z0-9]", "", name.lower()) + "_gaussian_deblur"
    return (SAMPLINGS.index(sampling) if sampling in SAMPLINGS else len(SAMPLINGS), stem)


def discover(root: str = ROOT) -> dict[str, MethodSpec]:
    """Every registered method that has an MNIST method table, by its first registered name.

    Reads ``configs/MNIST/methods/*.yaml`` (``method``, ``sampling``, ``tasks``); a method's
    tasks are its table's entries for the tasks of :data:`TASKS`, each run on the task config
    ``configs/MNIST/<sampling>/<task>_config.yaml``. Methods registered without a table
    (``none``) are not listed.

    Raises:
        ValueError: a table names a method that is not registered, or two tables one method.
    """
    found: dict[str, MethodSpec] = {}
    for path in sorted(glob.glob(os.path.join(root, "configs", "MNIST", "methods", "*.yaml"))):
        table = load_yaml(path, "method table")
        name = solver_class(str(table.get("method"))).names[0]
        if name in found:
            raise ValueError(f"two method tables of {name}: {found[name].table} and {path}")
        sampling = str(table.get("sampling", "DDIM"))
        tasks = {t: os.path.join(root, "configs", "MNIST", sampling, f"{t}_config.yaml")
                 for t in TASKS if t in (table.get("tasks") or {})}
        found[name] = MethodSpec(name, sampling, tasks, path)
    return dict(sorted(found.items(), key=lambda kv: _order(kv[0], kv[1].sampling, root)))


def conditioning(spec: MethodSpec, task: str) -> dict:
    """The conditioning ``main.py`` composes for method ``spec`` on ``task`` (its table's entry:
    ``params`` with the table's defaults, ``tuned``, ``tuned_respacing``, ``time_grid``;
    ``builder.compose_conditioning``)."""
    from builder import compose_conditioning
    return compose_conditioning({"method": spec.name, "task": task}, spec.configs[task])


def select(methods: str, tasks: str) -> tuple[dict[str, MethodSpec], list[str], list[str]]:
    """The methods and tasks a benchmark command asked for: comma lists or ``all``.

    Returns:
        (every discovered method's spec, the chosen method names, the chosen task names).

    Raises:
        ValueError: (one line) a name that is not a method with MNIST configs or not a task.
    """
    specs = discover()
    chosen = list(specs) if methods == "all" else methods.split(",")
    task_list = list(TASKS) if tasks == "all" else tasks.split(",")
    bad = [m for m in chosen if m not in specs] + [t for t in task_list if t not in TASKS]
    if bad:
        raise ValueError(f"unknown method or task {', '.join(bad)}; methods with MNIST configs: "
                         f"{', '.join(specs)}; tasks: {', '.join(TASKS)}")
    return specs, chosen, task_list


def budgets_of(spec: MethodSpec) -> tuple[int, ...]:
    """NFE budgets of a method: 20, 50, 100, plus 250 when its configs are DDPM ones."""
    return BUDGETS + ((DDPM_BUDGET,) if spec.sampling == "DDPM" else ())


def nfe_per_step(name: str, params: Mapping[str, Any]) -> int:
    """Network calls per reverse step that method ``name`` declares (``nfe_per_step``, an int
    or a callable of the params; default 1)."""
    value = getattr(solver_class(name), "nfe_per_step", 1)
    value = value(dict(params)) if callable(value) else value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"method {name!r}: nfe_per_step must be an integer >= 1, got {value!r}")
    return int(value)


def respacing_for(spec: MethodSpec, budget: int, params: Mapping[str, Any], task: str | None = None) -> str:
    """The ``timestep_respacing`` that spends ``budget`` network calls per image: ``ddim<steps>``
    (DDIM folder) or ``"<steps>"`` (DDPM folder), put on the time grid of the method's ``task``
    config (``conditioning.time_grid``, e.g. ``sigma<steps>max2``) when ``task`` is given and the
    config sets one (:func:`guided_diffusion.respace.grid_respacing`, as main.py does).

    Raises:
        ValueError: the budget is not a positive multiple of the method's calls per step, or a
            bad ``time_grid``.
    """
    from guided_diffusion.respace import grid_respacing
    k = nfe_per_step(spec.name, params)
    if budget < 1 or budget % k:
        raise ValueError(f"{spec.name}: budget {budget} NFE is not a multiple of its {k} calls per step")
    steps = budget // k
    respacing = f"ddim{steps}" if spec.sampling == "DDIM" else str(steps)
    return grid_respacing(respacing, time_grid(spec, task)) if task is not None else respacing


def time_grid(spec: MethodSpec, task: str) -> Any:
    """The ``time_grid`` of method ``spec``'s entry for ``task`` (None when unset)."""
    return conditioning(spec, task).get("time_grid")


def steps_of(respacing: str) -> int:
    """Reverse steps of a respacing string (``ddim50`` -> 50, ``"250"`` -> 250, ``"10,10"`` -> 20,
    ``sigma100max2`` -> 100)."""
    from guided_diffusion.respace import respacing_steps
    return respacing_steps(respacing)


def diffusion_config(spec: MethodSpec) -> dict:
    """The method's folder's diffusion config (configs/MNIST/<sampling>/diffusion_config.yaml)."""
    return load_yaml(config_path(spec.sampling, "diffusion_config"))


def method_params(spec: MethodSpec, task: str, respacing: str) -> dict:
    """The parameters ``main.py`` would run method ``spec`` with on ``task`` at ``respacing``:
    its table entry's ``params`` with the ``tuned`` values for that respacing applied."""
    return dict(apply_tuned({"conditioning": conditioning(spec, task)}, respacing)["conditioning"].get("params") or {})


def measurement_config(task: str) -> dict:
    """The measurement section every method gets for ``task`` (see MEASUREMENT_FOLDER)."""
    return load_yaml(config_path(MEASUREMENT_FOLDER, f"{task}_config"))["measurement"]


def file_digest(path: str) -> str:
    """First 16 hex digits of the SHA-256 of a file ("missing" when it does not exist)."""
    if not os.path.isfile(path):
        return "missing"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def prior_digest() -> str:
    """Digest of the embedded prior's checkpoint, so that cached results die with the prior."""
    cfg = load_yaml(config_path("DDPM", "model_config"))
    return file_digest(os.path.join(ROOT, cfg["model_path"]))


@dataclass
class Scored:
    """A method's reconstructions of a set of digits, scored.

    Attributes:
        psnr, ssim: per digit, on (x + 1) / 2 clipped to [0, 1] (dB; unitless).
        seconds: wall seconds per image of the sampling (measurement and scoring excluded).
        nfe: network calls per image, as counted by the sampling loop.
        recon: (N, 1, 32, 32) uint8 reconstructions (for re-scoring), or None.
    """
    psnr: list
    ssim: list
    seconds: float
    nfe: int
    recon: np.ndarray | None = None


def run_method(spec: MethodSpec, task: str, params: Mapping[str, Any], respacing: str, split: str,
               num: int, seed: int, batch_size: int = 8) -> Scored:
    """Restore the first ``num`` digits of ``split`` with method ``spec`` and ``params`` at
    ``respacing``, measured as in the CLI (image i: operator and noise draws from (seed, i)),
    with the measurement of :func:`measurement_config`, in batches of ``batch_size`` (results do
    not depend on it for the methods that are batch-independent; the seconds do).

    Raises:
        ValueError: bad parameters (from the solver), an unknown split, num out of range.
    """
    from builder import build_physics, build_sampler, build_solver
    from restore import restore
    x, idx = digits(split, num)
    dcfg = diffusion_config(spec)
    dcfg["timestep_respacing"] = respacing
    sampler = build_sampler(dcfg)
    model = load_prior()
    physics = build_physics(measurement_config(task))
    out, seconds, nfe = [], 0.0, 0
    for s in range(0, len(idx), batch_size):
        xb, ib = x[s:s + batch_size], idx[s:s + batch_size]
        solver = build_solver({"method": spec.name, "params": dict(params)})   # checked on the measured physics
        res = restore(model, sampler, physics, solver, ib, seed, x=xb)   # y from (seed, i) draws
        seconds += res.seconds * len(ib)
        nfe = res.nfe
        out.append(res.x0.float())
    rec = torch.cat(out)
    ps, ss = psnr(rec, x), ssim(rec, x)
    u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return Scored([float(v) for v in ps], [float(v) for v in ss], seconds / len(idx), int(nfe), u8)


def key_params(name: str, params: Mapping[str, Any]) -> dict:
    """``params`` of method ``name`` as they enter a cache key: a parameter marked neutral
    (``solvers.Param.neutral``: an option added later whose default reproduces the method as it
    ran before) is left out while it is at that default, so cells recorded before the option
    existed keep their keys; any other value (or parameter) is kept."""
    specs = solver_class(name).params
    return {k: v for k, v in params.items()
            if not (k in specs and specs[k].neutral and v == specs[k].default)}


def cache_key(**parts: Any) -> str:
    """A stable key (SHA-1 hex of the sorted JSON of ``parts`` and CACHE_VERSION)."""
    text = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


class Cache:
    """Results on disk, one JSON object per line, keyed by :func:`cache_key`; appending a line is
    the only write, so an interrupted run loses at most the line it was writing (a broken last
    line is ignored on reading) and several processes may append to one file.

    Args:
        path: the JSONL file (its folder is created on the first put).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._data: dict[str, dict] = {}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue   # a line cut short by an interruption
                    if isinstance(rec, dict) and "key" in rec:
                        self._data[rec["key"]] = rec

    def get(self, key: str) -> dict | None:
        """The record stored under ``key``, or None."""
        return self._data.get(key)

    def put(self, key: str, record: Mapping[str, Any]) -> dict:
        """Store ``record`` under ``key`` (appends one line, flushed and fsync'ed); returns it."""
        rec = {"key": key, **record}
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        line = json.dumps(rec, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._data[key] = rec
        return rec

    def __len__(self) -> int:
        return len(self._data)


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """(mean, standard error = sample std / √n) of finite values; SE is nan for n < 2."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se
