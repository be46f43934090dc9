"""Precision, memory layout and compile chosen for the machine (guided_diffusion/precision.py):
every branch of the decision with the capabilities passed in (no real GPU or bf16 CPU needed),
the alternating probe, its cache, create_model's use of them and summary.json's record."""
from __future__ import annotations

import json
import os

import pytest
import torch

from cli_helpers import REPO, TINY_MODEL, make_images, run_dir, run_inproc, tiny_args
from guided_diffusion import precision as P
from guided_diffusion.precision import Capabilities, Decision
from guided_diffusion.unet import create_model
from util.config import load_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AVX2 = Capabilities("cpu", "AVX2", False, False, "Old CPU", "2.x")
AVX512_BF16 = Capabilities("cpu", "AVX512", True, False, "New CPU", "2.x")
CUDA_BF16 = Capabilities("cuda", "AVX2", False, True, "A100 (sm_80)", "2.x")
CUDA_NO_BF16 = Capabilities("cuda", "AVX2", False, False, "V100 (sm_70)", "2.x")
MPS = Capabilities("mps", "DEFAULT", False, False, "M1", "2.x")


def timings(fp32=1.0, fp32_cl=1.0, bf16=1.0, bf16_cl=1.0):
    return {"fp32": fp32, "fp32+channels_last": fp32_cl, "bf16": bf16, "bf16+channels_last": bf16_cl}


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("AUTO ", "auto"), (None, "auto"), (True, True),
                                            (False, False), ("true", True), ("False", False)])
def test_parse_setting(value, expected):
    assert P.parse_setting(value, "use_fp16") == expected


@pytest.mark.parametrize("value", ["yes", 1, 0, "fp16", 2.0])
def test_parse_setting_rejects(value):
    with pytest.raises(ValueError, match="model config: compile must be true, false or auto"):
        P.parse_setting(value, "compile")


@pytest.mark.parametrize("setting,caps,expected,reason", [
    (False, AVX512_BF16, ["fp32"], "model.use_fp16: false"),
    (False, CUDA_BF16, ["fp32"], "model.use_fp16: false"),
    ("auto", CUDA_BF16, ["bf16"], "auto: cuda, the GPU supports bf16"),
    ("auto", CUDA_NO_BF16, ["fp16"], "auto: cuda, the GPU lacks bf16"),
    (True, CUDA_BF16, ["bf16"], "model.use_fp16: true, the GPU supports bf16"),
    (True, CUDA_NO_BF16, ["fp16"], "model.use_fp16: true, the GPU lacks bf16"),
    (True, AVX2, ["bf16"], "model.use_fp16: true (bf16 autocast on the CPU)"),
    ("auto", AVX2, ["fp32"], "auto: cpu lacks native bf16 (capability AVX2)"),
    ("auto", AVX512_BF16, ["fp32", "bf16"], ""),
    ("auto", MPS, ["fp32"], "auto: mps lacks native bf16 (capability DEFAULT)"),
])
def test_precision_candidates(setting, caps, expected, reason):
    assert P.precision_candidates(setting, caps) == (expected, reason)


def test_decide_without_probe():
    """Settings that decide alone need no timings; CPU without native bf16 stays fp32."""
    assert P.modes_to_probe(False, False, AVX512_BF16) == []
    assert P.modes_to_probe("auto", True, AVX2) == []
    prec, layout = P.decide("auto", True, AVX2)
    assert prec == Decision("fp32", "auto: cpu lacks native bf16 (capability AVX2)")
    assert layout == Decision(True, "model.channels_last: true")
    prec, layout = P.decide(True, False, CUDA_BF16)
    assert (prec.value, layout.value) == ("bf16", False)


def test_decide_bf16_by_probe():
    assert P.modes_to_probe("auto", "auto", AVX512_BF16) == ["fp32", "fp32+channels_last", "bf16", "bf16+channels_last"]
    prec, layout = P.decide("auto", "auto", AVX512_BF16, timings(fp32=10, fp32_cl=8, bf16=5, bf16_cl=4))
    assert prec.value == "bf16" and "2.00x the fp32 speed" in prec.reason and "AVX512" in prec.reason
    assert layout.value is True and "1.25x the NCHW speed (bf16)" in layout.reason


def test_decide_bf16_not_faster_keeps_fp32_and_nchw():
    prec, layout = P.decide("auto", "auto", AVX512_BF16, timings(fp32=1.0, fp32_cl=1.02, bf16=0.98, bf16_cl=0.97))
    assert prec.value == "fp32" and "only 1.03x" in prec.reason   # 1.0 / 0.97, below the 1.10 margin
    assert layout.value is False and "channels_last only 0.98x the NCHW speed (fp32)" in layout.reason


def test_decide_margins():
    """bf16 needs ≥ 1.10× (it costs a little accuracy), channels_last ≥ 1.05×."""
    prec, layout = P.decide("auto", "auto", AVX512_BF16, timings(fp32=1.1449, fp32_cl=1.07, bf16=1.07, bf16_cl=1.0))
    assert prec.value == "fp32" and "only 1.07x" in prec.reason
    assert layout.value is True and "channels_last 1.07x" in layout.reason
    prec, _ = P.decide("auto", "auto", AVX512_BF16, timings(fp32=1.1, fp32_cl=1.2, bf16=1.0, bf16_cl=1.3))
    assert prec.value == "bf16" and "1.10x" in prec.reason


def test_decide_layout_probe_only():
    """Precision fixed (false), layout auto: two modes; NHWC when ≥ 1.05× faster."""
    assert P.modes_to_probe(False, "auto", AVX2) == ["fp32", "fp32+channels_last"]
    _, layout = P.decide(False, "auto", AVX2, {"fp32": 1.0, "fp32+channels_last": 0.9})
    assert layout.value is True
    _, layout = P.decide(False, "auto", AVX2, {"fp32": 1.0, "fp32+channels_last": 0.96})
    assert layout.value is False
    # on CUDA the half type is decided without a probe, the layout by one
    assert P.modes_to_probe("auto", "auto", CUDA_BF16) == ["bf16", "bf16+channels_last"]
    prec, layout = P.decide("auto", "auto", CUDA_BF16, {"bf16": 2.0, "bf16+channels_last": 1.0})
    assert (prec.value, layout.value) == ("bf16", True)


def test_decide_needs_timings():
    with pytest.raises(ValueError, match="the probe must time the modes"):
        P.decide("auto", "auto", AVX512_BF16, {"fp32": 1.0})


@pytest.mark.parametrize("setting,caps,value,reason", [
    (True, AVX2, True, "model.compile: true"),
    (False, CUDA_BF16, False, "model.compile: false"),
    ("auto", AVX2, P.COMPILE_AUTO["cpu"][0], P.COMPILE_AUTO["cpu"][1]),
    ("auto", CUDA_BF16, P.COMPILE_AUTO["cuda"][0], P.COMPILE_AUTO["cuda"][1]),
    ("auto", MPS, False, "auto: off on mps (not measured)"),
])
def test_decide_compile(setting, caps, value, reason):
    assert P.decide_compile(setting, caps) == Decision(value, reason)


def test_probe_side():
    assert [P.probe_side(256, 6), P.probe_side(32, 3), P.probe_side(28, 3), P.probe_side(512, 7), P.probe_side(16, 5)] \
        == [64, 32, 28, 64, 16]


def test_time_modes_alternates_and_takes_medians():
    order, ticks = [], iter(range(1000))
    durations = {"a": iter([9, 1, 2, 3, 4, 5]), "b": iter([9, 10, 30, 20, 40, 50])}   # first: warm-up

    now = [0.0]

    def clock():
        return now[0]

    def make(name):
        def fn():
            order.append(name)
            now[0] += next(durations[name])
            next(ticks)
        return fn

    med = P.time_modes({"a": make("a"), "b": make("b")}, repeats=5, clock=clock)
    assert order == ["a", "b"] * 6
    assert med == {"a": 3, "b": 30}


def test_cache_roundtrip_and_location(tmp_path, monkeypatch):
    monkeypatch.setenv("CODPS_CACHE_DIR", str(tmp_path / "c"))
    assert P.cache_dir() == str(tmp_path / "c")
    assert P.load_cached("k") is None
    P.store_cached("k", {"fp32": 1.5}, AVX2)
    P.store_cached("k2", {"bf16": 0.5}, AVX2)
    assert P.load_cached("k") == {"fp32": 1.5} and P.load_cached("k2") == {"bf16": 0.5}
    (tmp_path / "c" / P.CACHE_FILE).write_text("not json")
    assert P.load_cached("k") is None
    monkeypatch.delenv("CODPS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert P.cache_dir() == str(tmp_path / "xdg" / "codps")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert P.cache_dir() == str(tmp_path / "home" / ".cache" / "codps")


def test_probe_key_depends_on_machine_torch_and_architecture():
    arch = {"image_size": 32, "num_channels": 32}
    key = P.probe_key(AVX512_BF16, arch, 32, ["fp32", "bf16"])
    assert key == P.probe_key(AVX512_BF16, dict(arch), 32, ["fp32", "bf16"])
    others = [P.probe_key(AVX2, arch, 32, ["fp32", "bf16"]),
              P.probe_key(Capabilities("cpu", "AVX512", True, False, "New CPU", "3.x"), arch, 32, ["fp32", "bf16"]),
              P.probe_key(AVX512_BF16, {**arch, "num_channels": 64}, 32, ["fp32", "bf16"]),
              P.probe_key(AVX512_BF16, arch, 16, ["fp32", "bf16"])]
    assert len({key, *others}) == 5


def test_probe_key_changes_with_the_code_version(monkeypatch):
    """A change of the probed code (PROBE_VERSION) does not reuse timings cached before it."""
    arch = {"image_size": 32, "num_channels": 32}
    key = P.probe_key(AVX512_BF16, arch, 32, ["fp32", "bf16"])
    monkeypatch.setattr(P, "PROBE_VERSION", P.PROBE_VERSION + 1)
    assert P.probe_key(AVX512_BF16, arch, 32, ["fp32", "bf16"]) != key


@pytest.fixture()
def tiny_cfg():
    return load_yaml(os.path.join(REPO, TINY_MODEL))


def test_create_model_probes_once_then_reads_the_cache(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("CODPS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(P, "detect_capabilities", lambda device: AVX512_BF16)
    cfg = dict(tiny_cfg, use_fp16="auto", channels_last="auto", compile=False)
    model = create_model(**cfg)
    rec = model.speed_settings
    assert rec["speed_probe"]["source"].startswith("probe of")
    assert set(rec["speed_probe"]["seconds"]) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    expect_p, expect_l = P.decide("auto", "auto", AVX512_BF16, rec["speed_probe"]["seconds"])
    assert (rec["precision"], rec["channels_last"]) == (expect_p.value, expect_l.value)
    assert model.use_fp16 == (expect_p.value != "fp32") and model.channels_last == expect_l.value
    assert model.input_blocks[0][0].weight.is_contiguous(
        memory_format=torch.channels_last if expect_l.value else torch.contiguous_format)
    again = create_model(**cfg).speed_settings
    assert again["speed_probe"] == {"source": "cached probe", "seconds": rec["speed_probe"]["seconds"]}
    # stored under the cache folder only
    assert os.listdir(tmp_path) == [P.CACHE_FILE]


def test_create_model_cpu_without_bf16_stays_fp32(tiny_cfg, monkeypatch):
    monkeypatch.setattr(P, "detect_capabilities", lambda device: AVX2)
    model = create_model(**dict(tiny_cfg, use_fp16="auto", channels_last=True))
    rec = model.speed_settings
    assert rec["precision"] == "fp32" and rec["precision_reason"] == "auto: cpu lacks native bf16 (capability AVX2)"
    assert "speed_probe" not in rec and not model.use_fp16 and model.channels_last


def test_create_model_mocked_cuda_picks_half_type(tiny_cfg, monkeypatch):
    """The CUDA branch, run on the CPU with the capabilities of a GPU without bf16: fp16 autocast."""
    monkeypatch.setattr(P, "detect_capabilities", lambda device: CUDA_NO_BF16)
    model = create_model(**dict(tiny_cfg, use_fp16="auto", channels_last=False))
    assert model.speed_settings["precision"] == "fp16" and model.half_dtype == torch.float16 and model.use_fp16
    monkeypatch.setattr(P, "detect_capabilities", lambda device: CUDA_BF16)
    model = create_model(**dict(tiny_cfg, use_fp16=True, channels_last=False))
    assert model.speed_settings["precision"] == "bf16" and model.half_dtype == torch.bfloat16
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    out = model(x, t)
    assert out.dtype == torch.float32 and out.shape == (1, 6, 32, 32)


def test_create_model_compile(tiny_cfg, monkeypatch):
    """compile: true wraps the model in torch.compile (mocked: compiling takes minutes on a CPU),
    and the wrapper still carries the record; false and auto on the CPU do not."""
    calls = []

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.inner = m

    def fake_compile(m, **kw):
        calls.append(m)
        return Wrapper(m)

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = create_model(**dict(tiny_cfg, channels_last=False, compile=True))
    assert isinstance(model, Wrapper) and len(calls) == 1
    assert model.speed_settings["compile"] is True and model.speed_settings["compile_reason"] == "model.compile: true"
    model = create_model(**dict(tiny_cfg, channels_last=False, compile="auto"))
    assert not isinstance(model, Wrapper) and model.speed_settings["compile"] is P.COMPILE_AUTO["cpu"][0]
    with pytest.raises(ValueError, match="model config: use_fp16 must be true, false or auto"):
        create_model(**dict(tiny_cfg, use_fp16="half"))


def test_half_precision_output_close_to_fp32(tiny_cfg):
    """bf16 autocast changes the tiny UNet's ε only at bf16 resolution (relative error < 2 %)."""
    torch.manual_seed(0)
    full = create_model(**dict(tiny_cfg, use_fp16=False, channels_last=False))
    for p in full.parameters():
        p.data.normal_(0, 0.05)
    half = create_model(**dict(tiny_cfg, use_fp16=True, channels_last=True))
    half.load_state_dict(full.state_dict())
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([100, 700])
    with torch.no_grad():
        a, b = full(x, t), half(x, t)
    assert a.abs().mean() > 0.01
    assert (a - b).norm() / a.norm() < 0.02


def test_summary_records_precision_and_layout(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=1)
    args = tiny_args("inpainting", data, tmp_path / "out") + ["diffusion.timestep_respacing=ddim2",
                                                             "model.channels_last=false"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir(tmp_path / "out", "inpainting") / "summary.json").read_text())
    assert summary["precision"] == "fp32" and summary["precision_reason"] == "model.use_fp16: false"
    assert summary["channels_last"] is False and summary["channels_last_reason"] == "model.channels_last: false"
    assert summary["compile"] is False and summary["compile_reason"].startswith("auto: off on the CPU")


def test_bad_setting_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=1)
    proc = run_inproc(tiny_args("inpainting", data, tmp_path / "out") + ["model.compile=maybe"],
                      tmp_path, monkeypatch, capsys)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: model config: compile must be true, false or auto, got 'maybe'"


def test_overrides_switch_between_auto_and_booleans():
    from util.config import ConfigError, apply_overrides
    cfg = {"model": {"use_fp16": "auto", "channels_last": True}}
    out, _ = apply_overrides(cfg, ["model.use_fp16=false", "model.channels_last=auto"])
    assert out["model"] == {"use_fp16": False, "channels_last": "auto"}
    # auto <-> a number passes the override check (scale=auto needs it); the model check refuses it
    from builder import check_speed_settings
    bad, _ = apply_overrides(cfg, ["model.use_fp16=3"])
    with pytest.raises(ValueError, match="use_fp16"):
        check_speed_settings(bad["model"])
    with pytest.raises(ConfigError, match="expected a bool value"):
        apply_overrides(cfg, ["model.channels_last=sometimes"])


def test_run_default_is_auto_library_default_is_fp32(tiny_cfg, monkeypatch):
    """build_model (main.py's path) reads a missing use_fp16 as auto; create_model as false."""
    from builder import build_model
    monkeypatch.setattr(P, "detect_capabilities", lambda device: CUDA_BF16)   # auto -> bf16 without a probe
    cfg = {k: v for k, v in tiny_cfg.items() if k != "use_fp16"}
    cfg["channels_last"] = False
    assert build_model(cfg, "cpu").speed_settings["precision"] == "bf16"
    assert create_model(**cfg).speed_settings["precision"] == "fp32"


def test_probe_cache_records_its_conditions_and_is_measured_again(tmp_path, monkeypatch):
    """The cache entry records threads, cores and load; other threads, or a poor (loaded) earlier
    measurement while the load is lower now, or CODPS_REPROBE, make it measure again."""
    monkeypatch.setenv("CODPS_CACHE_DIR", str(tmp_path))
    idle = {"threads": 2, "cores": 2, "load": 0.1}
    P.store_cached("k", {"fp32": 1.5}, AVX2, idle)
    assert P.load_cached("k", idle) == {"fp32": 1.5}
    assert P.load_cached("k", {**idle, "threads": 1}) is None                  # other threads
    assert P.load_cached("k", {**idle, "load": 3.0}) == {"fp32": 1.5}          # measured idle: kept
    busy = {"threads": 2, "cores": 2, "load": 4.0}
    assert P.poor_conditions(busy) and not P.poor_conditions(idle)
    P.store_cached("k", {"fp32": 2.5}, AVX2, busy)
    assert P.load_cached("k", {**busy, "load": 4.5}) == {"fp32": 2.5}          # still as loaded: no re-measure
    assert P.load_cached("k", idle) is None                                    # poor then, better now
    P.store_cached("old", {"fp32": 1.0}, AVX2)                                 # an entry without conditions
    assert P.load_cached("old", idle) is None and P.load_cached("old") == {"fp32": 1.0}
    monkeypatch.setenv("CODPS_REPROBE", "1")
    assert P.load_cached("k", busy) is None
