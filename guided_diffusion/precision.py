"""How the network runs on this machine: the precision (fp32 / bf16 / fp16 autocast), the memory
layout (NCHW / channels_last) and ``torch.compile``, from the model-config keys ``use_fp16``,
``channels_last`` and ``compile`` (each ``auto``, ``true`` or ``false``).

The decisions are pure functions of the settings, the machine's :class:`Capabilities` and (for
``auto`` on the CPU) the timings of a short start-up probe, so that tests can pass any machine.
The probe (5 alternating calls per mode, medians) runs once per machine, torch version and
architecture; its timings are cached in ``$CODPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/codps``,
else ``~/.cache/codps`` (never in the repository). See docs/speed.md for the measurements behind
the rules.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

log = logging.getLogger(__name__)

#: bf16 is chosen by an ``auto`` probe only when its best median forward is at least this many
#: times faster than fp32's (a margin over timing noise, and bf16 costs a little accuracy).
MIN_SPEEDUP_BF16 = 1.10
#: channels_last is chosen by an ``auto`` probe only when at least this many times faster than
#: NCHW (a margin over timing noise; the layout does not change the results' accuracy).
MIN_SPEEDUP_LAYOUT = 1.05
#: Calls per mode in the probe (alternating between modes; the median is kept), after one warm-up.
PROBE_CALLS = 5
#: The probe runs the network on (1, C, s, s) inputs with s at most this side (the UNet is
#: convolutional: a 64×64 input exercises the same layers, dtypes and layouts 16× faster than 256×256).
PROBE_MAX_SIDE = 64
#: What ``compile: auto`` does per device type, and the measurement behind it
#: (benchmarks/results/compile_cpu.md; CUDA: not measured yet, ``benchmarks/gpu_check.sh`` measures it).
COMPILE_AUTO = {
    "cpu": (False, "auto: off on the CPU (a 100-step run measured 13x slower at 32x32 and no faster at "
                   "256x256 with compile time counted; benchmarks/results/compile_cpu.md)"),
    "cuda": (False, "auto: off on CUDA until benchmarks/gpu_check.sh measures a gain"),
}
#: Version of the probed code paths, part of the cache key: bump it when a change to the network's
#: code moves the modes' relative speeds, so that caches of earlier timings are not reused
#: (2: bf16 GroupNorm without float32 copies and in-place inference, docs/speed.md).
PROBE_VERSION = 2
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CACHE_FILE = "speed_probe.json"


def parse_setting(value: Any, key: str) -> bool | str:
    """``True``, ``False`` or ``"auto"`` from a config value (bool, or the strings true / false /
    auto in any case; ``None`` means auto). Raises ValueError naming ``model.<key>`` otherwise.

    >>> parse_setting("Auto", "compile"), parse_setting("false", "compile"), parse_setting(True, "compile")
    ('auto', False, True)
    """
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("true", "false"):
        return text == "true"
    if text == "auto":
        return "auto"
    raise ValueError(f"model config: {key} must be true, false or auto, got {value!r}")


@dataclass(frozen=True)
class Capabilities:
    """What PyTorch reports about the machine a model runs on.

    device_type: "cpu" or "cuda" (others are treated as the CPU rules: no probe, fp32).
    cpu_capability: ``torch.backends.cpu.get_cpu_capability()``, e.g. "AVX2", "AVX512".
    cpu_bf16: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` (oneDNN has native bf16 kernels).
    cuda_bf16: ``torch.cuda.is_bf16_supported()`` (False off CUDA).
    machine: the CPU model name, or the GPU name and compute capability.
    torch_version: ``torch.__version__``.
    """
    device_type: str
    cpu_capability: str
    cpu_bf16: bool
    cuda_bf16: bool
    machine: str
    torch_version: str


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect_capabilities(device: str | torch.device) -> Capabilities:
    """The :class:`Capabilities` of ``device`` as this PyTorch build reports them."""
    device = torch.device(device)
    try:
        cpu_capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        cpu_capability = "unknown"
    try:
        cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        cpu_bf16 = False
    cuda_bf16, machine = False, _cpu_model_name()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda_bf16 = bool(torch.cuda.is_bf16_supported())
        major, minor = torch.cuda.get_device_capability(index)
        machine = f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    return Capabilities(device.type, cpu_capability, cpu_bf16, cuda_bf16, machine, torch.__version__)


@dataclass(frozen=True)
class Decision:
    """A setting's value as used ("fp32" / "bf16" / "fp16" for the precision, a bool for the
    layout and compile) and why, in words (recorded in summary.json)."""
    value: Any
    reason: str


def precision_candidates(setting: bool | str, caps: Capabilities) -> tuple[list[str], str]:
    """The precisions ``use_fp16`` leaves open on this machine, and the reason when only one is.

    false: fp32. true: the machine's half type (CUDA: bf16 where the GPU supports it, else fp16;
    CPU: bf16). auto on CUDA: the same half type; auto on a CPU with native bf16 (oneDNN):
    fp32 and bf16, to be decided by the probe; auto elsewhere: fp32.

    >>> caps = Capabilities("cpu", "AVX2", False, False, "x", "2")
    >>> precision_candidates("auto", caps)
    (['fp32'], 'auto: cpu lacks native bf16 (capability AVX2)')
    """
    if setting is False:
        return ["fp32"], "model.use_fp16: false"
    if caps.device_type == "cuda":
        half, why = ("bf16", "the GPU supports bf16") if caps.cuda_bf16 else ("fp16", "the GPU lacks bf16")
        return [half], f"{'model.use_fp16: true' if setting is True else 'auto: cuda'}, {why}"
    if setting is True:
        return ["bf16"], "model.use_fp16: true (bf16 autocast on the CPU)"
    if caps.device_type == "cpu" and caps.cpu_bf16:
        return ["fp32", "bf16"], ""
    where = "cpu" if caps.device_type == "cpu" else caps.device_type
    return ["fp32"], f"auto: {where} lacks native bf16 (capability {caps.cpu_capability})"


def layout_candidates(setting: bool | str) -> tuple[list[bool], str]:
    """The channels_last values ``channels_last`` leaves open ([False, True] for auto: probe)."""
    if setting == "auto":
        return [False, True], ""
    return [bool(setting)], f"model.channels_last: {'true' if setting else 'false'}"


def decide(precision_setting: bool | str, layout_setting: bool | str, caps: Capabilities,
           timings: Mapping[str, float] | None = None) -> tuple[Decision, Decision]:
    """The precision and memory layout to use.

    Args:
        precision_setting, layout_setting: ``use_fp16`` and ``channels_last`` as parsed by
            :func:`parse_setting`.
        caps: the machine.
        timings: median seconds per forward of each open mode, keyed by :func:`mode_name`
            (from :func:`run_probe`); needed only when :func:`modes_to_probe` is not empty.
    Returns:
        (precision Decision with value "fp32" / "bf16" / "fp16", layout Decision with a bool).
        bf16 is taken from the probe only when its best mode is ≥ :data:`MIN_SPEEDUP_BF16` ×
        faster than fp32's best; then channels_last only when ≥ :data:`MIN_SPEEDUP_LAYOUT` ×
        faster than NCHW at the chosen precision. Ties keep fp32 and NCHW (the simpler path).
    Raises:
        ValueError: a probe is needed and ``timings`` lacks one of its modes.
    """
    precisions, p_reason = precision_candidates(precision_setting, caps)
    layouts, l_reason = layout_candidates(layout_setting)
    needed = [mode_name(p, c) for p in precisions for c in layouts]
    if len(needed) > 1 and (timings is None or any(m not in timings for m in needed)):
        raise ValueError(f"the probe must time the modes {needed}, got {sorted(timings or {})}")

    def best(p: str) -> float:
        return min(timings[mode_name(p, c)] for c in layouts)

    if len(precisions) == 1:
        precision = Decision(precisions[0], p_reason)
    else:
        ratio = best("fp32") / best("bf16")
        where = f"capability {caps.cpu_capability}, native bf16"
        if ratio >= MIN_SPEEDUP_BF16:
            precision = Decision("bf16", f"auto: probe, bf16 {ratio:.2f}x the fp32 speed ({where})")
        else:
            precision = Decision("fp32", f"auto: probe, bf16 only {ratio:.2f}x the fp32 speed ({where})")
    if len(layouts) == 1:
        layout = Decision(layouts[0], l_reason)
    else:
        p = precision.value
        ratio = timings[mode_name(p, False)] / timings[mode_name(p, True)]
        verdict = "" if ratio >= MIN_SPEEDUP_LAYOUT else "only "
        layout = Decision(ratio >= MIN_SPEEDUP_LAYOUT, f"auto: probe, channels_last {verdict}{ratio:.2f}x the NCHW speed ({p})")
    return precision, layout


def modes_to_probe(precision_setting: bool | str, layout_setting: bool | str, caps: Capabilities) -> list[str]:
    """The modes (:func:`mode_name`) the probe must time; empty when the settings decide alone."""
    precisions, _ = precision_candidates(precision_setting, caps)
    layouts, _ = layout_candidates(layout_setting)
    modes = [mode_name(p, c) for p in precisions for c in layouts]
    return modes if len(modes) > 1 else []


def decide_compile(setting: bool | str, caps: Capabilities) -> Decision:
    """Whether to wrap the model in ``torch.compile``: as set, or for auto :data:`COMPILE_AUTO`
    of the device type (off where not measured)."""
    if setting != "auto":
        return Decision(bool(setting), f"model.compile: {'true' if setting else 'false'}")
    value, reason = COMPILE_AUTO.get(caps.device_type, (False, f"auto: off on {caps.device_type} (not measured)"))
    return Decision(value, reason)


def mode_name(precision: str, channels_last: bool) -> str:
    """ "fp32", "bf16+channels_last", ... """
    return precision + ("+channels_last" if channels_last else "")


def probe_side(image_size: int, levels: int) -> int:
    """The side of the probe's input: ``image_size`` capped at :data:`PROBE_MAX_SIDE`, a multiple
    of 2^(levels - 1) so that every downsampling halves an even side.

    >>> probe_side(256, 6), probe_side(32, 3), probe_side(28, 3)
    (64, 32, 28)
    """
    step = 2 ** max(levels - 1, 0)
    side = min(image_size, max(PROBE_MAX_SIDE, step))
    return max(step, side - side % step)


def time_modes(calls: Mapping[str, Callable[[], Any]], sync: Callable[[], None] = lambda: None,
               repeats: int = PROBE_CALLS, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of each callable: one warm-up call each, then ``repeats`` rounds calling
    every mode once in turn (alternating, so that a machine slowing down or speeding up hits
    all modes alike). ``sync`` waits for the device (``torch.cuda.synchronize`` on a GPU)."""
    for fn in calls.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def run_probe(model: torch.nn.Module, modes: Sequence[str], in_channels: int, side: int,
              device: str | torch.device) -> dict[str, float]:
    """Median seconds per forward of ``model`` (a :class:`guided_diffusion.unet.UNetModel`) on a
    (1, in_channels, side, side) input at timestep 500, in each of ``modes``
    (``mode_name(precision, channels_last)``), under ``torch.inference_mode``. The model is
    switched between modes in place and left NCHW, fp32."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, in_channels, side, side), generator=gen).to(device)
    t = torch.full((1,), 500, device=device, dtype=torch.long)

    def call(mode: str) -> Callable[[], Any]:
        precision, _, layout = mode.partition("+")

        def fn() -> Any:
            set_mode(model, precision, bool(layout))
            with torch.inference_mode():
                return model(x, t)
        return fn

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    try:
        return time_modes({m: call(m) for m in modes}, sync)
    finally:
        set_mode(model, "fp32", False)


def set_mode(model: torch.nn.Module, precision: str, channels_last: bool) -> None:
    """Put ``model`` (a UNetModel) in a precision ("fp32", "bf16", "fp16": autocast dtype; the
    parameters stay float32) and memory layout, in place."""
    model.use_fp16 = precision != "fp32"
    model.half_dtype = HALF_DTYPES.get(precision)
    if getattr(model, "channels_last", False) != channels_last:
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        model.channels_last = channels_last


def cache_dir() -> str:
    """$CODPS_CACHE_DIR, else $XDG_CACHE_HOME/codps, else ~/.cache/codps."""
    if os.environ.get("CODPS_CACHE_DIR"):
        return os.environ["CODPS_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "codps")


def probe_key(caps: Capabilities, architecture: Mapping[str, Any], side: int, modes: Sequence[str]) -> str:
    """A hash of what the probe's outcome depends on: the machine (model name, capability, bf16
    support), torch version, device type, architecture keys, probe side and modes, and the
    version of the probed code (:data:`PROBE_VERSION`)."""
    text = json.dumps({"caps": asdict(caps), "arch": {k: str(v) for k, v in sorted(architecture.items())},
                       "side": side, "modes": list(modes), "calls": PROBE_CALLS, "code": PROBE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def probe_conditions() -> dict[str, float]:
    """What the probe's timings depend on besides the key: torch's intra-op threads, the CPU
    cores this process may use and the machine's 1-minute load average (util.threads)."""
    from util.threads import available_cores, machine_load
    return {"threads": int(torch.get_num_threads()), "cores": int(available_cores()), "load": round(machine_load(), 2)}


def poor_conditions(cond: Mapping[str, Any]) -> bool:
    """Whether timings taken under ``cond`` shared the CPU: the load of the other processes
    (load average) left fewer idle cores than the probe's threads (by more than half a core)."""
    try:
        return float(cond["load"]) > max(0.0, float(cond["cores"]) - float(cond["threads"])) + 0.5
    except (KeyError, TypeError, ValueError):
        return True


def stale_reason(stored: Mapping[str, Any] | None, now: Mapping[str, Any]) -> str | None:
    """Why cached timings measured under ``stored`` conditions should be measured again under
    ``now``: another thread count; or poor stored conditions (:func:`poor_conditions`, or none
    recorded) while the load is lower now; None to reuse them."""
    if not stored:
        return "no measurement conditions recorded"
    if int(stored.get("threads", -1)) != int(now["threads"]):
        return f"measured with {stored.get('threads')} threads, now {now['threads']}"
    if poor_conditions(stored) and float(now["load"]) < float(stored.get("load", 0.0)):
        return f"measured under load {stored.get('load')} on {stored.get('cores')} cores, now {now['load']}"
    return None


def reprobe_requested() -> bool:
    """Whether a fresh probe is asked for (``main.py --reprobe`` sets ``CODPS_REPROBE=1``)."""
    return os.environ.get("CODPS_REPROBE", "").strip() not in ("", "0")


def load_cached(key: str, conditions: Mapping[str, Any] | None = None) -> dict[str, float] | None:
    """The cached timings for ``key``, or None (no cache, unreadable cache, no entry, a reprobe
    requested, or, when the current ``conditions`` are given, timings to measure again under them:
    :func:`stale_reason`, logged)."""
    if reprobe_requested():
        return None
    path = os.path.join(cache_dir(), CACHE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(entry, dict) and isinstance(entry.get("timings"), dict):
        if conditions is not None:
            why = stale_reason(entry.get("conditions"), conditions)
            if why:
                log.info("speed probe cache %s: measuring again (%s)", path, why)
                return None
        return {str(k): float(v) for k, v in entry["timings"].items()}
    return None


def store_cached(key: str, timings: Mapping[str, float], caps: Capabilities,
                 conditions: Mapping[str, Any] | None = None) -> None:
    """Add ``key``'s timings to the cache file with the ``conditions`` they were measured under
    (:func:`probe_conditions`; atomically; a cache that cannot be written is logged and skipped:
    the probe then runs again next time)."""
    from util.image_io import save_json
    path = os.path.join(cache_dir(), CACHE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = {"timings": dict(timings), "machine": caps.machine, "capability": caps.cpu_capability,
                 "torch": caps.torch_version, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "conditions": dict(conditions) if conditions is not None else None}
    try:
        save_json(path, data)
    except OSError as exc:
        log.warning("could not write the speed probe cache %s: %s", path, exc)


def choose(model: torch.nn.Module, architecture: Mapping[str, Any], use_fp16: Any, channels_last: Any,
           compile: Any, device: str | torch.device, caps: Capabilities | None = None) -> dict[str, Any]:
    """Decide precision, layout and compile for ``model`` (a UNetModel on ``device``), probing
    (or reading the cache) when ``auto`` needs it, and put the model in the chosen precision and
    layout. Returns the record for summary.json: precision, precision_reason, channels_last,
    channels_last_reason, compile, compile_reason and (when probed) probe timings in seconds.
    Raises ValueError for a setting other than true / false / auto."""
    settings = (parse_setting(use_fp16, "use_fp16"), parse_setting(channels_last, "channels_last"),
                parse_setting(compile, "compile"))
    caps = caps or detect_capabilities(device)
    modes = modes_to_probe(settings[0], settings[1], caps)
    timings, source = None, ""
    if modes:
        side = probe_side(model.image_size, model.levels)
        key = probe_key(caps, architecture, side, modes)
        many = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        if not many or torch.distributed.get_rank() == 0:
            conditions = probe_conditions()
            timings = load_cached(key, conditions)
            source = "cached probe"
            if timings is None or any(m not in timings for m in modes):
                start = time.perf_counter()
                timings = run_probe(model, modes, model.in_channels, side, device)
                store_cached(key, timings, caps, conditions)
                source = f"probe of {time.perf_counter() - start:.1f} s"
        if many:   # every process takes rank 0's timings: one precision and layout for the whole run
            box = [(timings, source)]
            torch.distributed.broadcast_object_list(box, src=0, device=torch.device(device))
            timings, source = box[0]
        log.info("speed %s at %dx%d: %s", source, side, side,
                 ", ".join(f"{m} {1000 * s:.1f} ms" for m, s in timings.items()))
    precision, layout = decide(settings[0], settings[1], caps, timings)
    comp = decide_compile(settings[2], caps)
    set_mode(model, precision.value, layout.value)
    record = {"precision": precision.value, "precision_reason": precision.reason,
              "channels_last": layout.value, "channels_last_reason": layout.reason,
              "compile": comp.value, "compile_reason": comp.reason}
    if timings is not None:
        record["speed_probe"] = {"source": source, "seconds": dict(timings)}
    log.info("network: %s (%s); %s (%s); compile %s (%s)", precision.value, precision.reason,
             "channels_last" if layout.value else "NCHW", layout.reason, comp.value, comp.reason)
    return record

