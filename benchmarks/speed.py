"""Speed and memory of posterior sampling: how much a data-consistency step costs next to the
network, per solver and operator, at the FFHQ architecture (256×256) and at the embedded prior's
size (32×32), with peak memory, images per hour against batch size and half precision.

    python -m benchmarks.speed              # the full run (tens of minutes on a CPU)
    python -m benchmarks.speed --quick      # about a minute: the 32×32 tables, the 256×256
                                            # data-consistency calls against one network forward
    python -m benchmarks.speed --device cuda
    python -m benchmarks.speed --psnr       # bf16 (CPU) / fp16 (CUDA) against fp32: PSNR on the test digits
    python -m benchmarks.speed --e2e        # whole main.py processes per method, size, precision
                                            # (benchmarks/e2e.py; its arguments follow --e2e)
    python -m benchmarks.speed --tables steps,memory --solvers DDRM,TMPD   # some tables, some methods
    python -m benchmarks.speed --threads 1 --clock cpu   # CPU seconds of this process instead of wall
                                            # seconds (a machine shared with other jobs)

Everything is timed in one process and one run, with warm-up calls and the median of repeats
(``torch.cuda.synchronize`` around every timed call on a GPU). Networks have random weights
(``model_path: ""``): timing does not depend on them. The tables are printed and written, with
the machine, torch version, thread count and device, to ``benchmarks/results/speed_<device>.json``
and ``.md`` (``--quick``: ``speed_<device>_quick.*`` in a new temporary folder unless ``--out``
is given, so that a quick run never rewrites the committed results).

What is measured:

- **steps**: one sampler step (network forward + proposal + data consistency) of the plain
  unconditional sampler and of every registered solver (CoDPS and DPS with the DDPM sampler,
  the others with DDIM, as in the paper's configs), for every registered operator; the step is
  timed inside ``GaussianDiffusion.sample`` itself (between its per-step callbacks), split into
  the network forward (a timing wrapper around the model) and the rest. ``overhead`` is
  (step − plain step) / plain step computed from the non-network parts, which the network's
  run-to-run noise does not blur.
- **data consistency**: the solver call alone for every closed-form solver of the registry
  (CoDPS, CoDPS+, DDRM, DDNM, DiffPIR, ...: no network, no autograd, under ``torch.inference_mode``) and A, Aᵀ, (σ²I + r²AAᵀ)⁻¹ alone, against one network forward.
- **memory**: peak memory of a two-step run per solver, each in its own subprocess (CPU: peak
  RSS, ``resource.getrusage``; CUDA: ``torch.cuda.max_memory_allocated``).
- **batch**: a CoDPS+ step for N = 1, 2, 4, 8 images (while memory allows), the network calls
  per step (one per step whatever N) and images per hour for the paper's 100 DDIM steps.
- **precision**: a CoDPS+ step with fp32, channels_last, half precision (``use_fp16``: bf16 on
  CPU, fp16 on CUDA) and both; a mode whose forward is predicted (fp32 forward × the ratio of
  32×32 probes) to take more than ``--max_forward_s`` is skipped with that prediction.
- ``--psnr``, a separate mode (needs the embedded prior's checkpoint ``ckpts/mnist32.pt``):
  PSNR of CoDPS+ reconstructions of ``samples/mnist/*.png`` with the fp32 and the
  half-precision prior, same seeds (``precision_psnr_<device>.json`` / ``.md``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from builder import build_dataset, build_model, build_physics, build_spec, operator_kwargs  # noqa: E402
from guided_diffusion.gaussian_diffusion import create_sampler  # noqa: E402
from operators import get_noise, get_operator, list_operators  # noqa: E402
from operators import Physics  # noqa: E402
from restore import measure as restore_measure, restore  # noqa: E402
from sampling import make_step  # noqa: E402
from solvers import get_solver, list_methods  # noqa: E402
from util.config import load_yaml  # noqa: E402
from util.metrics import psnr  # noqa: E402

log = logging.getLogger("benchmarks.speed")

RESULTS = os.path.join(ROOT, "benchmarks", "results")
#: Model config and task-config folder of each benchmarked size.
SIZES = {
    "ffhq256": {"model": "configs/FFHQ/DDIM/model_config.yaml", "tasks": "configs/FFHQ/DDIM"},
    "mnist32": {"model": "configs/MNIST/DDPM/model_config.yaml", "tasks": "configs/MNIST/DDIM"},
}
#: Operator of each shipped task config (the paper's settings for that size).
TASK_OF_OPERATOR = {"gaussian_blur": "gaussian_deblur", "motion_blur": "motion_deblur",
                    "super_resolution": ("super_resolution", "super_resolution_x4"), "inpainting": "inpainting"}
#: Sampler each solver is used with in the paper's configs (the others: DDIM).
DDPM_SOLVERS = ("CoDPS", "DPS")
#: Steps per image of the paper's samplers, for images per hour.
PAPER_STEPS = {"ddim": 100, "ddpm": 1000}
NOISE_SIGMA = 0.05
#: The operator used for the memory, batch and precision tables.
MAIN_OPERATOR = "gaussian_blur"
#: Image side of the probe that predicts a precision mode's forward time at a larger size.
PROBE_SIDE = 32
#: Solvers of the memory table in a quick run (each costs a subprocess).
QUICK_MEMORY = ("none", "CoDPS+", "DPS")
#: The tables of a run, in order (``--tables`` selects a subset).
TABLES = ("dc", "steps", "memory", "batch", "precision")
#: Step t (of a 100-step schedule) at which the data-consistency call is timed: the
#: correction is active there (CoDPS+ skips it at t = 0).
DC_STEP = 50


# ------------------------------------------------------------------------------------------
# Timing helpers
# ------------------------------------------------------------------------------------------

#: The clocks of ``--clock``: ``wall`` (time.perf_counter, the default) or ``cpu``
#: (time.process_time: this process's CPU seconds, all threads summed; with ``--threads 1`` on the
#: CPU it is the wall time of a machine to oneself, and it does not count the time other jobs on a
#: shared machine take from this one).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_CLOCK = ["wall"]


def _load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def clock() -> float:
    """Seconds on the clock chosen by ``--clock`` (:data:`CLOCKS`)."""
    return CLOCKS[_CLOCK[0]]()


def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (CUDA); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median, min and max seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls (device
    synchronised around each). Returns {"median_s", "min_s", "max_s", "n"}."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        start = clock()
        fn()
        sync(device)
        times.append(clock() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


class TimedModel(torch.nn.Module):
    """Wraps an ε-network, counting its calls and timing each (device synchronised), so that
    a sampler step can be split into network and the rest. ``calls``: number of calls;
    ``times``: seconds of each call."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device = model, device
        self.calls, self.times = 0, []

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:  # noqa: D102
        sync(self.device)
        start = clock()
        out = self.model(x, t, **kw)
        sync(self.device)
        self.times.append(clock() - start)
        self.calls += 1
        return out


def time_sampler_steps(model: torch.nn.Module, sampler_kind: str, solver: Any, y: torch.Tensor | None,
                       shape: Sequence[int], device: torch.device, warmup: int, repeats: int,
                       seed: int = 0, physics: Any = None) -> dict:
    """Time sampler steps inside ``sampling.sample``: a schedule of warmup + repeats + 1
    steps, the first ``warmup`` steps and the last (t = 0, where CoDPS+ does not correct) not
    counted.

    Args:
        model: the ε-network; sampler_kind: "ddim" or "ddpm"; solver: a solvers.Solver;
        y: the measurement (None for the plain sampler); shape: (N, C, H, W) of the batch;
        physics: the ``operators.Physics`` of y (None for the plain sampler).
    Returns:
        {"step_s": median seconds per step, "network_s": median network seconds per step,
        "rest_s": median (step − network), "network_calls_per_step": calls / steps,
        "steps": timed steps, "batch": N}. Times are for the whole batch.
    """
    steps = warmup + repeats + 1
    sampler = create_sampler(sampler=sampler_kind, timestep_respacing=str(steps))
    timed = TimedModel(model, device)
    stamps: list[float] = []

    def callback(i: int, t: int, x0_hat: torch.Tensor, residual: torch.Tensor) -> None:
        sync(device)
        stamps.append(clock())

    sync(device)
    start = clock()   # x_T of image i from (seed, i), as every run (restore.restore)
    restore(timed, sampler, physics, solver, list(range(shape[0])), seed, y=y, image_shape=tuple(shape[1:]),
            callback=callback, device=device)
    bounds = [start] + stamps
    step_times = [bounds[k + 1] - bounds[k] for k in range(steps)]
    kept = range(warmup, warmup + repeats)
    step = [step_times[k] for k in kept]
    net = [timed.times[k] for k in kept] if timed.calls == steps else [float("nan")]
    rest = [s - n for s, n in zip(step, net)]
    return {"step_s": statistics.median(step), "network_s": statistics.median(net),
            "rest_s": statistics.median(rest), "network_calls_per_step": timed.calls / steps,
            "steps": len(step), "batch": int(shape[0])}


# ------------------------------------------------------------------------------------------
# Building the pieces
# ------------------------------------------------------------------------------------------

def model_config(size: str, **changes: Any) -> dict:
    """The model config of ``size`` (a key of :data:`SIZES`) with random weights and ``changes``."""
    cfg = load_yaml(os.path.join(ROOT, SIZES[size]["model"]))
    cfg["model_path"] = ""
    cfg["use_fp16"] = False   # the tables time fp32; the precision table sets use_fp16 per mode
    cfg.update(changes)
    return cfg


def image_shape(cfg: dict, batch: int = 1) -> tuple[int, int, int, int]:
    """(batch, C, H, W) of a model config."""
    return batch, int(cfg.get("in_channels", 3)), int(cfg["image_size"]), int(cfg["image_size"])


def operator_settings(size: str) -> dict[str, dict]:
    """{operator name: keyword arguments} for every registered linear operator at ``size``: the
    shipped task config's arguments where one exists, else the operator's defaults."""
    out: dict[str, dict] = {}
    folder = os.path.join(ROOT, SIZES[size]["tasks"])
    for name in list_operators(linear=True):    # the table times A, Aᵀ and cov_solve
        tasks = TASK_OF_OPERATOR.get(name, ())
        for task in (tasks,) if isinstance(tasks, str) else tasks:
            path = os.path.join(folder, f"{task}_config.yaml")
            if os.path.isfile(path):
                op_name, kwargs = operator_kwargs(load_yaml(path)["measurement"])
                if op_name == name:
                    out[name] = kwargs
                    break
        out.setdefault(name, {})
    return out


@dataclass
class Measurement:
    """An operator with its draws for a batch, its noise model, the clean batch x and y."""
    name: str
    physics: Any
    x: torch.Tensor
    y: torch.Tensor

    @property
    def operator(self) -> Any:
        """The physics' operator."""
        return self.physics.operator


def make_measurement(name: str, kwargs: dict, shape: Sequence[int], device: torch.device,
                     seed: int = 0) -> Measurement:
    """Build operator ``name`` with ``kwargs``, draw it for ``shape`` with per-image seeds and
    measure a random smooth batch x in [-1, 1]. Raises ValueError / RuntimeError when the
    operator cannot handle the shape."""
    physics = Physics(get_operator(name, device=device, **kwargs), get_noise("gaussian", sigma=NOISE_SIGMA))
    idx = list(range(shape[0]))
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((shape[0], shape[1], 8, 8), generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=tuple(shape[2:]), mode="bicubic", align_corners=False)
    x = x.clamp(-1, 1).to(device)
    # measure runs under no_grad, not inference_mode: the operator's cached tensors must stay usable by autograd (DPS)
    y = restore_measure(physics, x, idx, seed)
    return Measurement(name, physics, x, y)


def dc_solvers() -> list[str]:
    """The registered solvers without gradient through the network (not ``none``), CoDPS and CoDPS+
    first: the data-consistency table times their ``step`` alone (one whose step needs more network
    calls, ``step.denoise``, raises ValueError on the bare step and is left out)."""
    names = [n for n in solver_names() if n != "none" and not get_solver(n).needs_grad]
    return sorted(names, key=lambda n: (n not in ("CoDPS", "CoDPS+"), ("CoDPS", "CoDPS+").index(n)
                                        if n in ("CoDPS", "CoDPS+") else 0, n.lower()))


def solver_names() -> list[str]:
    """One registered name per solver class (aliases dropped), the plain sampler ("none") first."""
    names = [cls.names[0] for cls in list_methods()]
    return sorted(names, key=lambda n: (n != "none", n.lower()))


def sampler_of(solver: str) -> str:
    """"ddpm" for CoDPS and DPS (the paper's configs), else "ddim"."""
    return "ddpm" if solver in DDPM_SOLVERS else "ddim"


def machine_info(device: torch.device) -> dict:
    """The machine and software the numbers were measured on."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "logical_cpus": os.cpu_count(),
            "cpu_features": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                                              "avx512_vnni", "fma")),
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "device": str(device), "mkldnn": torch.backends.mkldnn.is_available()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


# ------------------------------------------------------------------------------------------
# The tables
# ------------------------------------------------------------------------------------------

def forward_time(model: torch.nn.Module, shape: Sequence[int], device: torch.device, warmup: int,
                 repeats: int) -> dict:
    """Median seconds of one network forward on a random (N, C, H, W) batch (inference mode)."""
    x = torch.randn(tuple(shape), device=device)
    t = torch.full((shape[0],), 500, device=device, dtype=torch.long)
    with torch.inference_mode():
        return time_call(lambda: model(x, t), device, warmup, repeats)


def dc_table(size: str, device: torch.device, forward_s: float, warmup: int, repeats: int) -> list[dict]:
    """The data-consistency call alone for every operator and closed-form solver (:func:`dc_solvers`:
    CoDPS, CoDPS+, DDRM, ...; a solver whose ``check`` refuses the operator is left out), and A, Aᵀ,
    cov_solve alone, with their fraction of one network forward."""
    cfg = model_config(size)
    shape = image_shape(cfg)
    rows = []
    for name, kwargs in operator_settings(size).items():
        try:
            m = make_measurement(name, kwargs, shape, device)
        except (ValueError, RuntimeError) as exc:
            rows.append({"operator": name, "skipped": " ".join(str(exc).split())[:200]})
            continue
        x0 = (m.x + 0.1 * torch.randn_like(m.x)).clamp(-1, 1)
        row: dict[str, Any] = {"operator": name, "kwargs": kwargs}
        with torch.inference_mode():
            row["A_ms"] = 1e3 * time_call(lambda: m.operator.forward(x0), device, warmup, repeats)["median_s"]
            row["AT_ms"] = 1e3 * time_call(lambda: m.operator.adjoint(m.y), device, warmup, repeats)["median_s"]
            row["cov_solve_ms"] = 1e3 * time_call(lambda: m.operator.cov_solve(m.y, 0.3, NOISE_SIGMA ** 2), device,
                                                  warmup, repeats)["median_s"]
            for solver_name in dc_solvers():
                solver = get_solver(solver_name)
                try:
                    solver.check(m.physics)
                except ValueError:
                    continue
                step = make_step(x0, x0, x0, DC_STEP, 0.5, 0.6, weight=0.01)
                try:
                    sec = time_call(lambda: solver.step(step, m.y, m.physics), device, warmup, repeats)
                except ValueError:          # the step needs the network (step.denoise): not a DC call alone
                    continue
                row[f"{solver_name}_ms"] = 1e3 * sec["median_s"]
                row[f"{solver_name}_pct_of_forward"] = 100.0 * sec["median_s"] / forward_s
        rows.append(row)
    return rows


def step_table(size: str, model: torch.nn.Module, device: torch.device, warmup: int, repeats: int,
               solvers: Sequence[str] | None = None, operators: Sequence[str] | None = None) -> list[dict]:
    """One sampler step of the plain sampler and of each solver, for each operator (see
    :func:`time_sampler_steps`), with ``ratio`` = step / plain step of the same sampler and
    ``overhead_ratio`` = (plain step + rest − plain rest) / plain step."""
    cfg = model_config(size)
    shape = image_shape(cfg)
    names = list(solvers) if solvers is not None else solver_names()
    plain: dict[str, dict] = {}
    for kind in sorted({sampler_of(s) for s in names if s != "none"} | {"ddim"}):
        res = time_sampler_steps(model, kind, get_solver("none"), None, shape, device, warmup, repeats)
        plain[kind] = res
    rows = [{"operator": "-", "solver": f"plain ({kind})", "sampler": kind, **res, "ratio": 1.0,
             "overhead_ratio": 1.0} for kind, res in plain.items()]
    for name, kwargs in operator_settings(size).items():
        if operators is not None and name not in operators:
            continue
        try:
            m = make_measurement(name, kwargs, shape, device)
        except (ValueError, RuntimeError) as exc:
            rows.append({"operator": name, "skipped": " ".join(str(exc).split())[:200]})
            continue
        for solver_name in names:
            if solver_name == "none":
                continue
            kind = sampler_of(solver_name)
            try:
                solver = get_solver(solver_name)
                solver.check(m.physics)
            except ValueError as exc:
                rows.append({"operator": name, "solver": solver_name, "skipped": str(exc)[:200]})
                continue
            res = time_sampler_steps(model, kind, solver, m.y, shape, device, warmup, repeats, physics=m.physics)
            base = plain[kind]
            rows.append({"operator": name, "solver": solver_name, "sampler": kind, **res,
                         "ratio": res["step_s"] / base["step_s"],
                         "overhead_ratio": (base["step_s"] + res["rest_s"] - base["rest_s"]) / base["step_s"]})
            log.info("%s %s %s: step %.3f s (network %.3f s), x%.3f of the plain step", size, name, solver_name,
                     res["step_s"], res["network_s"], rows[-1]["ratio"])
    return rows


def _proc_status_mb(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of /proc/self/status in MB (Linux), None elsewhere."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: ``clear_refs``
    5). Returns False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(spec: dict) -> dict:
    """In a fresh process: peak memory of a two-step run of ``spec["solver"]`` at
    ``spec["size"]`` on ``spec["device"]`` (operator :data:`MAIN_OPERATOR`, batch 1).

    Returns MB figures: ``rss_before_mb`` (resident memory with the model built),
    ``peak_rss_mb`` (the process's peak resident memory during the run; on Linux the peak is
    reset before the run, elsewhere it is ``ru_maxrss`` since the start), ``rss_growth_mb``
    (their difference: activations, autograd graph, FFT buffers) and, on CUDA,
    ``cuda_peak_mb`` (``max_memory_allocated`` during the run) and ``cuda_model_mb``."""
    device = torch.device(spec["device"])
    size, solver_name = spec["size"], spec["solver"]
    SIZES.setdefault(size, spec.get("paths", {}))
    cfg = model_config(size)
    shape = image_shape(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, device)
    m = make_measurement(MAIN_OPERATOR, operator_settings(size)[MAIN_OPERATOR], shape, device)
    solver = get_solver(solver_name)
    sampler = create_sampler(sampler=sampler_of(solver_name), timestep_respacing="2")
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 ** 2   # ru_maxrss: KB on Linux, bytes on macOS
    before = _proc_status_mb("VmRSS")
    exact = before is not None and _reset_peak_rss()
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device) / 2 ** 20
    restore(model, sampler, None if solver_name == "none" else m.physics, solver, [0], 0,
            y=None if solver_name == "none" else m.y, image_shape=tuple(shape[1:]), device=device)
    sync(device)
    after = _proc_status_mb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    out = {"solver": solver_name, "size": size, "operator": MAIN_OPERATOR, "rss_before_mb": before,
           "peak_rss_mb": after, "rss_growth_mb": after - before, "peak_reset": exact}
    if device.type == "cuda":
        out.update(cuda_peak_mb=torch.cuda.max_memory_allocated(device) / 2 ** 20, cuda_model_mb=base_cuda)
    return out


def memory_table(size: str, device: torch.device, solvers: Sequence[str], timeout_s: float = 1800) -> list[dict]:
    """:func:`memory_child` for each solver, each in its own subprocess (same threads and
    environment). A child that fails gives a row with ``error``."""
    rows = []
    for solver_name in solvers:
        spec = json.dumps({"size": size, "paths": SIZES[size], "solver": solver_name, "device": str(device)})
        cmd = [sys.executable, "-m", "benchmarks.speed", "--memory_child", spec]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        except subprocess.TimeoutExpired:
            rows.append({"solver": solver_name, "size": size, "error": f"timed out after {timeout_s:g} s"})
            continue
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            rows.append({"solver": solver_name, "size": size,
                         "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]})
            continue
        rows.append(json.loads(lines[-1]))
        log.info("memory %s %s: %s", size, solver_name, rows[-1])
    return rows


def available_memory_mb(device: torch.device) -> float | None:
    """Free memory in MB: CUDA free memory, or MemAvailable of /proc/meminfo; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2 ** 20
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def batch_table(size: str, model: torch.nn.Module, device: torch.device, warmup: int, repeats: int,
                batches: Sequence[int], per_image_mb: float | None) -> list[dict]:
    """A CoDPS+ (DDIM) step on :data:`MAIN_OPERATOR` for each batch size N: seconds per step,
    network calls per step (must be 1 for any N; ``nfe_ok``) and images per hour for
    :data:`PAPER_STEPS` ["ddim"] steps. N is skipped when ``per_image_mb`` × N exceeds 80% of
    the free memory, or when it runs out of memory (CUDA)."""
    cfg = model_config(size)
    rows = []
    for n in batches:
        free = available_memory_mb(device)
        if per_image_mb is not None and free is not None and per_image_mb * n > 0.8 * free:
            rows.append({"batch": n, "skipped": f"needs about {per_image_mb * n:.0f} MB, {free:.0f} MB free"})
            continue
        shape = image_shape(cfg, n)
        m = make_measurement(MAIN_OPERATOR, operator_settings(size)[MAIN_OPERATOR], shape, device)
        solver = get_solver("CoDPS+")
        try:
            res = time_sampler_steps(model, "ddim", solver, m.y, shape, device, warmup, repeats, physics=m.physics)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append({"batch": n, "skipped": "out of memory"})
            break
        res["nfe_ok"] = res["network_calls_per_step"] == 1.0
        res["s_per_image_step"] = res["step_s"] / n
        res["images_per_hour"] = 3600.0 * n / (res["step_s"] * PAPER_STEPS["ddim"])
        rows.append(res)
        log.info("batch %d: %.3f s per step, %.1f images per hour", n, res["step_s"], res["images_per_hour"])
    return rows


def half_name(device: torch.device) -> str:
    """The half-precision type ``use_fp16: true`` selects on ``device``: "bf16" (CPU; CUDA where
    the GPU supports it) or "fp16" (other GPUs); see guided_diffusion/precision.py."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"


def precision_table(size: str, device: torch.device, warmup: int, repeats: int, max_forward_s: float) -> list[dict]:
    """A CoDPS+ step on :data:`MAIN_OPERATOR` (batch 1) with fp32, channels_last, half precision
    and both, with the speed-up over fp32 and the time of a 100-step image.

    fp32 is always measured. Above :data:`PROBE_SIDE` pixels, each other mode is first timed on
    a PROBE_SIDE² input, and skipped when its predicted forward, the fp32 forward × (its probe /
    the fp32 probe), exceeds ``max_forward_s`` seconds (bf16 convolutions can be 100× slower
    than fp32 on CPUs without native bf16)."""
    half = half_name(device)
    modes = [("fp32", False, False), ("channels_last", False, True), (half, True, False),
             (f"{half}+channels_last", True, True)]
    base = model_config(size)
    shape = image_shape(base)
    m = make_measurement(MAIN_OPERATOR, operator_settings(size)[MAIN_OPERATOR], shape, device)
    probe_shape = (1, shape[1], PROBE_SIDE, PROBE_SIDE)
    rows: list[dict] = []
    fp32_probe = fp32_forward = None
    for label, fp16, cl in modes:
        torch.manual_seed(0)
        model = build_model(model_config(size, use_fp16=fp16, channels_last=cl), device)
        row: dict[str, Any] = {"mode": label, "use_fp16": fp16, "channels_last": cl}
        if shape[-1] > PROBE_SIDE:
            probe = forward_time(model, probe_shape, device, 1, 1)["median_s"]
            row["probe_forward_s"] = probe
            if fp32_probe is None:
                fp32_probe = probe
            elif fp32_forward is not None:
                estimate = fp32_forward * probe / fp32_probe
                row["predicted_forward_s"] = estimate
                if estimate > max_forward_s:
                    row["skipped"] = (f"a forward would take about {estimate:.0f} s (fp32 forward x "
                                      f"{probe / fp32_probe:.1f}, from {PROBE_SIDE}x{PROBE_SIDE} probes), above "
                                      f"--max_forward_s {max_forward_s:g}")
                    rows.append(row)
                    log.info("precision %s %s: %s", size, label, row["skipped"])
                    continue
        solver = get_solver("CoDPS+")
        res = time_sampler_steps(model, "ddim", solver, m.y, shape, device, warmup, repeats, physics=m.physics)
        if label == "fp32":
            fp32_forward = res["network_s"]
        row.update(res)
        row["s_per_image_100_steps"] = res["step_s"] * PAPER_STEPS["ddim"]
        rows.append(row)
        log.info("precision %s %s: step %.3f s", size, label, res["step_s"])
        del model
    ref = next((r for r in rows if r["mode"] == "fp32" and "step_s" in r), None)
    for r in rows:
        if ref is not None and "step_s" in r:
            r["speedup_vs_fp32"] = ref["step_s"] / r["step_s"]
    return rows


def precision_psnr(device: torch.device, ckpt: str, tasks: Sequence[str], num_images: int | None,
                   seed: int = 0, respacing: str | None = None) -> dict:
    """PSNR of CoDPS+ (configs/MNIST/DDIM) reconstructions of samples/mnist with the prior in
    fp32 and in half precision (same seeds: per-image kernels / masks, noise and sampler noise).

    Args:
        ckpt: the embedded prior's checkpoint; tasks: names of configs/MNIST/DDIM/<task>_config.yaml;
        num_images: the first N digits (None: all); respacing: overrides the config's
        ``timestep_respacing`` (ddim100), for tests.
    Returns {"tasks": [{task, psnr_fp32, psnr_<half>, mean_diff_db, max_abs_diff_db,
    s_per_image_*}], ...} or {"skipped": reason} when ``ckpt`` is missing."""
    if not os.path.isfile(ckpt):
        return {"skipped": f"{os.path.relpath(ckpt, ROOT)} not found (the embedded prior's checkpoint); "
                           "train it or copy it there, or pass --mnist_ckpt"}
    half = half_name(device)
    out = {"checkpoint": os.path.relpath(ckpt, ROOT), "half": half, "tasks": []}
    models = {}
    for fp16 in (False, True):
        cfg = model_config("mnist32", model_path=ckpt, use_fp16=fp16)
        models[fp16] = build_model(cfg, device)
    shape1 = image_shape(model_config("mnist32"))
    diffusion = load_yaml(os.path.join(ROOT, "configs", "MNIST", "DDIM", "diffusion_config.yaml"))
    if respacing is not None:
        diffusion["timestep_respacing"] = respacing
    sampler = create_sampler(**diffusion)
    out["steps"] = sampler.num_timesteps
    for task in tasks:
        task_path = os.path.join(ROOT, "configs", "MNIST", "DDIM", f"{task}_config.yaml")
        task_cfg = load_yaml(task_path)
        spec = build_spec({"model": {}, "diffusion": diffusion, "task": task_cfg}, task_path=task_path)
        data = dict(spec.data, root=os.path.join(ROOT, "samples", "mnist"))
        dataset = build_dataset(data, shape1[1:])
        n = len(dataset) if num_images is None else min(num_images, len(dataset))
        idx = list(range(n))
        x = torch.stack([dataset.load(i) for i in idx]).to(device)
        physics = build_physics(spec.measurement, device)
        y = restore_measure(physics, x, idx, seed)
        solver = get_solver(spec.method, **spec.params)   # the task's default method with its table values
        scores, secs = {}, {}
        for fp16, model in models.items():
            res = restore(model, sampler, physics, solver, idx, seed, x=x, y=y)
            secs[fp16] = res.seconds
            scores[fp16] = np.asarray(psnr(res.x0, x))
        diff = scores[True] - scores[False]
        out["tasks"].append({"task": task, "images": n, "psnr_fp32": float(scores[False].mean()),
                             f"psnr_{half}": float(scores[True].mean()), "mean_diff_db": float(diff.mean()),
                             "max_abs_diff_db": float(np.abs(diff).max()), "s_per_image_fp32": secs[False],
                             f"s_per_image_{half}": secs[True]})
        log.info("precision PSNR %s: %s", task, out["tasks"][-1])
    return out


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

def _fmt(v: Any, spec: str = ".3g") -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v).lower()
    if isinstance(v, float):
        return "nan" if v != v else format(v, spec)
    return str(v)


def md_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table of ``rows`` with ``columns`` = [(key, header, format spec)]; a row with
    ``skipped`` / ``error`` shows it in its last column."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    lines = [head, "|" + "---|" * len(columns)]
    for r in rows:
        note = r.get("skipped") or r.get("error")
        cells = [_fmt(r.get(k), spec) for k, _, spec in columns]
        if note:
            cells[-1] = f"skipped: {note}" if r.get("skipped") else f"error: {note}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _dc_columns(rows: Sequence[dict]) -> list[str]:
    """Solver names with a ``<name>_ms`` entry in the data-consistency rows: CoDPS, CoDPS+ first, then
    alphabetical (as :func:`dc_solvers`)."""
    names = {key[:-3] for row in rows for key in row
             if key.endswith("_ms") and key not in ("A_ms", "AT_ms", "cov_solve_ms")}
    first = ("CoDPS", "CoDPS+")
    return sorted(names, key=lambda n: (n not in first, first.index(n) if n in first else 0, n.lower()))


def report(results: dict) -> str:
    """The markdown report of a run's ``results`` (the JSON written next to it)."""
    m = results["machine"]
    title = ("Half precision against fp32 (PSNR)" if results.get("mode") == "psnr"
             else f"Speed benchmark ({'quick' if results['quick'] else 'full'} run)")
    out = [f"# {title}", "",
           f"`{results['command']}`, {results['date']}, {results['wall_s']:.0f} s.", "",
           f"Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs; {', '.join(m['cpu_features']) or 'no AVX'}), "
           f"{m.get('gpu', 'no GPU')}; torch {m['torch']}, {m['threads']} threads, device {m['device']}. "
           + ("Random weights; medians of the repeats after warm-up." if results.get("mode") != "psnr" else "")
           + (" Times are CPU seconds of this process (`--clock cpu`, time.process_time), not wall seconds."
              if results.get("clock") == "cpu" else "")
           + (f" Load average (1 min) {results['load_average'][0]:.1f} at the start, "
              f"{results['load_average'][1]:.1f} at the end." if None not in (results.get("load_average") or [None]) else ""), ""]
    for size, sec in results["sizes"].items():
        out += [f"## {size}", ""]
        if "forward" in sec:
            f = sec["forward"]
            out += [f"One network forward (batch 1): {f['median_s'] * 1e3:.1f} ms (min {f['min_s'] * 1e3:.1f}, "
                    f"max {f['max_s'] * 1e3:.1f}, n = {f['n']}).", ""]
        if sec.get("dc"):
            out += ["### Data-consistency call alone (ms; % of one network forward)", "",
                    md_table(sec["dc"], [("operator", "operator", ""), ("A_ms", "A", ".3g"), ("AT_ms", "Aᵀ", ".3g"),
                                         ("cov_solve_ms", "(σ²I+r²AAᵀ)⁻¹", ".3g")]
                             + [c for n in _dc_columns(sec["dc"]) for c in
                                ((f"{n}_ms", n, ".3g"), (f"{n}_pct_of_forward", f"{n} %", ".3f"))]), ""]
        if sec.get("steps"):
            out += ["### One sampler step (s)", "",
                    "`ratio`: step / plain step of the same sampler; `overhead`: the same from the non-network "
                    "parts only (plain step + rest − plain rest) / plain step, free of the network's run-to-run "
                    "noise.", "",
                    md_table(sec["steps"], [("operator", "operator", ""), ("solver", "solver", ""),
                                            ("sampler", "sampler", ""), ("step_s", "step", ".4g"),
                                            ("network_s", "network", ".4g"), ("rest_s", "rest", ".3g"),
                                            ("network_calls_per_step", "NFE/step", ".3g"), ("ratio", "ratio", ".4f"),
                                            ("overhead_ratio", "overhead", ".4f")]), ""]
        if sec.get("memory"):
            out += ["### Peak memory of a two-step run (MB; operator " + MAIN_OPERATOR + ")", "",
                    md_table(sec["memory"], [("solver", "solver", ""), ("rss_before_mb", "RSS, model built", ".0f"),
                                             ("peak_rss_mb", "peak RSS", ".0f"), ("rss_growth_mb", "growth", ".0f"),
                                             ("cuda_peak_mb", "CUDA peak", ".0f")]), ""]
        if sec.get("batch"):
            out += ["### CoDPS+ step against batch size", "",
                    md_table(sec["batch"], [("batch", "N", ""), ("step_s", "s / step", ".4g"),
                                            ("s_per_image_step", "s / image / step", ".4g"),
                                            ("network_calls_per_step", "network calls / step", ".3g"),
                                            ("nfe_ok", "1 call per step", ""),
                                            ("images_per_hour", "images / hour (100 steps)", ".4g")]), ""]
        if sec.get("precision"):
            out += ["### Precision and memory layout (CoDPS+ step, batch 1)", "",
                    md_table(sec["precision"], [("mode", "mode", ""), ("step_s", "s / step", ".4g"),
                                                ("network_s", "network", ".4g"),
                                                ("speedup_vs_fp32", "speed-up", ".3f"),
                                                ("s_per_image_100_steps", "s / image (100 steps)", ".4g"),
                                                ("predicted_forward_s", "predicted forward", ".3g")]), ""]
    p = results.get("precision_psnr")
    if p is not None:
        out += ["## Half precision: PSNR change on the embedded prior's test digits", ""]
        if "skipped" in p:
            out += [f"Skipped: {p['skipped']}.", ""]
        else:
            half = p["half"]
            out += [f"CoDPS+ (configs/MNIST/DDIM, {p['steps']} steps), prior `{p['checkpoint']}`, fp32 against "
                    f"{half} (channels_last as the model's auto setting), same seeds; PSNR on (x + 1) / 2 clipped.", "",
                    md_table(p["tasks"], [("task", "task", ""), ("images", "images", ""),
                                          ("psnr_fp32", "PSNR fp32", ".3f"), (f"psnr_{half}", f"PSNR {half}", ".3f"),
                                          ("mean_diff_db", "mean Δ (dB)", ".3f"),
                                          ("max_abs_diff_db", "max abs Δ (dB)", ".3f"),
                                          ("s_per_image_fp32", "s / image fp32", ".3g"),
                                          (f"s_per_image_{half}", f"s / image {half}", ".3g")]), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command line."""
    p = argparse.ArgumentParser(description="Speed and memory of CoDPS / CoDPS+ / DPS / ΠGDM sampling steps.")
    p.add_argument("--quick", action="store_true",
                   help="about a minute: the 32x32 tables and, at 256x256, the data-consistency calls against one "
                        "network forward")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: main.py's, util.threads.default_threads: OMP_NUM_THREADS, else the "
                        "idle cores)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls / steps before timing (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (default 3; quick 2)")
    p.add_argument("--sizes", default=None, help="comma-separated subset of " + ",".join(SIZES))
    p.add_argument("--batches", default="1,2,4,8", help="batch sizes of the batch table")
    p.add_argument("--solvers", default=None, help="comma-separated subset of the registered solvers (default all)")
    p.add_argument("--operators", default=None,
                   help="comma-separated subset of the registered operators for the step table (default all)")
    p.add_argument("--tables", default=",".join(TABLES),
                   help="comma-separated subset of the tables to run: " + ", ".join(TABLES) + " (default all; "
                        "the network forward is always timed)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: elapsed seconds (default); cpu: this process's CPU seconds (time.process_time), "
                        "with --threads 1 on a CPU the figure of a machine to oneself, robust to other jobs "
                        "sharing the machine (not with --device cuda)")
    p.add_argument("--max_forward_s", type=float, default=60.0,
                   help="skip a precision mode whose forward is predicted to take longer (seconds)")
    p.add_argument("--psnr", action="store_true",
                   help="instead of timing: PSNR of CoDPS+ on samples/mnist with the embedded prior in fp32 and in "
                        "half precision (bf16 on CPU), written to precision_psnr_<device>.json / .md")
    p.add_argument("--psnr_tasks", default="gaussian_deblur,super_resolution_x4,inpainting",
                   help="--psnr: configs/MNIST/DDIM task names")
    p.add_argument("--psnr_images", type=int, default=None, help="--psnr: the first N test digits (default all)")
    p.add_argument("--psnr_respacing", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mnist_ckpt", default=os.path.join(ROOT, "ckpts", "mnist32.pt"),
                   help="--psnr: the embedded prior's checkpoint")
    p.add_argument("--out", default=None,
                   help="folder of speed_<device>[_quick].json / .md (default: benchmarks/results for a full run; "
                        "a new temporary folder for --quick, so that a quick run never rewrites the committed "
                        "results)")
    p.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if available else cpu; otherwise ``torch.device(name)``. Raises
    ValueError when CUDA is asked for and not available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    return dev


def output_folder(out: str | None, quick: bool) -> str:
    """Where a run writes its results: ``out`` when given; else :data:`RESULTS` for a full run
    and a new temporary folder (``speed_quick_*`` under the system's temp folder) for a quick
    one, so that ``--quick`` never rewrites the committed ``benchmarks/results/`` files."""
    if out:
        return out
    if not quick:
        return RESULTS
    import tempfile
    folder = tempfile.mkdtemp(prefix="speed_quick_")
    log.info("--quick without --out: writing to %s (benchmarks/results is left as committed)", folder)
    return folder


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark described by ``args``; returns the results (also written to disk)."""
    device = resolve_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise ValueError(f"--clock cpu times CPU work only; use --clock wall with --device {device}")
    _CLOCK[0] = args.clock
    from util.threads import default_threads
    torch.set_num_threads(args.threads or default_threads())   # the CLI's default, so the timings match a run
    quick = args.quick
    warmup = 1 if args.warmup is None else args.warmup
    repeats = (2 if quick else 3) if args.repeats is None else args.repeats
    sizes = args.sizes.split(",") if args.sizes else list(SIZES)
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; valid: {', '.join(SIZES)}")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    start = time.perf_counter()
    if args.psnr:
        return run_psnr(args, device, start)
    load_start = _load_average()
    results: dict[str, Any] = {"quick": quick, "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:]),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(device),
                               "warmup": warmup, "repeats": repeats, "clock": args.clock, "sizes": {}}
    solvers = solver_names()
    if args.solvers:
        wanted = [n.strip() for n in args.solvers.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in solvers]
        if unknown:
            raise ValueError(f"unknown solver(s) {unknown}; valid: {', '.join(solvers)}")
        solvers = [n for n in solvers if n in wanted or n == "none"]
    operators = None
    if args.operators:
        operators = [n.strip() for n in args.operators.split(",") if n.strip()]
        unknown = [n for n in operators if n not in list_operators()]
        if unknown:
            raise ValueError(f"unknown operator(s) {unknown}; valid: {', '.join(list_operators())}")
    tables = [n.strip() for n in args.tables.split(",") if n.strip()]
    unknown = [n for n in tables if n not in TABLES]
    if unknown:
        raise ValueError(f"--tables: unknown table(s) {unknown}; valid: {', '.join(TABLES)}")
    results["solvers"] = solvers
    results["tables"] = tables
    for size in sizes:
        full = not (quick and size == "ffhq256")   # quick: 256x256 only the forward and the DC calls
        sec: dict[str, Any] = {}
        results["sizes"][size] = sec
        torch.manual_seed(0)
        cfg = model_config(size)
        model = build_model(cfg, device)
        sec["model"] = {k: cfg[k] for k in ("image_size", "in_channels", "num_channels", "channel_mult",
                                           "attention_resolutions") if k in cfg}
        sec["model"]["channels_last"] = bool(getattr(model, "channels_last", False))
        sec["forward"] = forward_time(model, image_shape(cfg), device, warmup, 1 if not full else repeats)
        log.info("%s: forward %.3f s", size, sec["forward"]["median_s"])
        small_reps = max(repeats, 20)   # the DC calls are cheap: more repeats
        if "dc" in tables:
            sec["dc"] = dc_table(size, device, sec["forward"]["median_s"], warmup + 2, small_reps)
        if not full:
            continue
        if "steps" in tables:
            sec["steps"] = step_table(size, model, device, warmup, repeats, solvers, operators)
        if "memory" in tables:
            sec["memory"] = memory_table(size, device, [s for s in solvers if s in QUICK_MEMORY] if quick
                                         else solvers)
        if "batch" in tables:
            mem = {r["solver"]: r for r in sec.get("memory", [])}
            growth = mem.get("CoDPS+", {}).get("cuda_peak_mb" if device.type == "cuda" else "rss_growth_mb")
            sec["batch"] = batch_table(size, model, device, warmup, repeats, batches,
                                       None if growth is None else max(growth, 1.0) * 1.5)
        del model
        if "precision" in tables:
            sec["precision"] = precision_table(size, device, warmup, repeats, args.max_forward_s)
    results["wall_s"] = time.perf_counter() - start
    results["load_average"] = [load_start, _load_average()]
    out = output_folder(args.out, quick)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"speed_{device.type}{'_quick' if quick else ''}")
    from util.image_io import atomic_write_bytes, save_json
    save_json(stem + ".json", results)
    atomic_write_bytes(stem + ".md", (report(results) + "\n").encode("utf-8"))
    results["written"] = [stem + ".json", stem + ".md"]
    return results


def run_psnr(args: argparse.Namespace, device: torch.device, start: float) -> dict:
    """The ``--psnr`` mode: :func:`precision_psnr` for ``--psnr_tasks`` on all test digits,
    written to ``precision_psnr_<device>.json`` / ``.md``."""
    tasks = [t.strip() for t in args.psnr_tasks.split(",") if t.strip()]
    for task in tasks:
        if not os.path.isfile(os.path.join(ROOT, "configs", "MNIST", "DDIM", f"{task}_config.yaml")):
            raise ValueError(f"--psnr_tasks: no configs/MNIST/DDIM/{task}_config.yaml")
    results: dict[str, Any] = {"quick": False, "mode": "psnr",
                               "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:]),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(device),
                               "sizes": {}}
    results["precision_psnr"] = precision_psnr(device, os.path.abspath(args.mnist_ckpt), tasks, args.psnr_images,
                                               respacing=args.psnr_respacing)
    results["wall_s"] = time.perf_counter() - start
    out = output_folder(args.out, False)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"precision_psnr_{device.type}")
    from util.image_io import atomic_write_bytes, save_json
    save_json(stem + ".json", results)
    atomic_write_bytes(stem + ".md", (report(results) + "\n").encode("utf-8"))
    results["written"] = [stem + ".json", stem + ".md"]
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point: run, print the markdown report, return 0 (2 for a bad argument).
    ``--e2e``: the whole-process benchmark of :mod:`benchmarks.e2e` (its own arguments follow)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--e2e" in argv:
        from benchmarks import e2e
        return e2e.main([a for a in argv if a != "--e2e"])
    args = parse_args(argv)
    if args.memory_child:
        torch.set_grad_enabled(True)
        print(json.dumps(memory_child(json.loads(args.memory_child))), flush=True)
        return 0
    from util.logger import setup_logging
    setup_logging()
    try:
        results = run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(results))
    print(f"\nwritten: {', '.join(os.path.relpath(p, ROOT) for p in results['written'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
