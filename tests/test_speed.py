"""Batched sampling costs one network call per step and gives every image the result it gets
alone; the channels_last option; the speed benchmark runs end to end on the tiny test UNet and
writes its JSON and markdown."""
from __future__ import annotations

import json
import os

import pytest
import torch

from cli_helpers import REPO, TINY_MODEL
from builder import model_config_keys
from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.unet import create_model, resolve_channels_last
from operators import Physics, get_noise, get_operator
from sampling import sample
from solvers import get_solver
from util.config import load_yaml
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators


@pytest.fixture(scope="module")
def tiny():
    cfg = load_yaml(os.path.join(REPO, TINY_MODEL))
    torch.manual_seed(0)
    model = create_model(**cfg)
    for p in model.parameters():   # non-zero output layer
        p.data.normal_(0, 0.05)
    return model


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.batches = model, 0, []

    def forward(self, x, t):
        self.calls += 1
        self.batches.append(x.shape[0])
        return self.model(x, t)


#: Step sizes of the paper's FFHQ configs (Gaussian deblurring), so that samples stay in range.
PARAMS = {"CoDPS+": dict(scale=0.05, inv_var=1.0), "CoDPS": dict(scale=0.01, inv_var=0.1), "DPS": dict(scale=0.3)}


def _restore(model, method, indices, sampler="ddim", steps="4"):
    """Posterior samples of images ``indices`` (motion blur with per-image kernels) in one batch."""
    physics = Physics(get_operator("motion_blur", kernel_size=9, intensity=0.5), get_noise("gaussian", sigma=0.05))
    g = torch.Generator().manual_seed(1)
    x_all = torch.rand((4, 3, 32, 32), generator=g) * 2 - 1
    x = x_all[indices]
    y = physics.measure(x, numpy_rngs(5, indices, STREAM_OPERATOR), torch_generators(5, indices, STREAM_NOISE))
    diff = create_sampler(sampler=sampler, timestep_respacing=steps, model_var_type="learned_range")
    gens = torch_generators(5, indices, STREAM_SAMPLER)
    counting = Counting(model)
    res = sample(counting, diff, randn(x.shape[1:], gens), y, get_solver(method, **PARAMS[method]), physics, gens,
                 progress=False)
    return res, counting


@pytest.mark.parametrize("method,sampler", [("CoDPS+", "ddim"), ("CoDPS", "ddpm"), ("DPS", "ddpm")])
def test_batch_costs_one_network_call_per_step_and_matches_single_images(tiny, method, sampler):
    batch, counting = _restore(tiny, method, [0, 1, 2], sampler)
    assert counting.calls == 4 == batch.nfe and counting.batches == [3] * 4
    for k, i in enumerate([0, 1, 2]):
        alone, c1 = _restore(tiny, method, [i], sampler)
        assert c1.calls == 4
        gap = (batch.x0[k] - alone.x0[0]).abs().max()
        assert torch.allclose(batch.x0[k], alone.x0[0], rtol=1e-4, atol=1e-4), (method, i, gap)


def test_channels_last_option(tiny):
    assert "channels_last" in model_config_keys()
    assert resolve_channels_last("auto", "cuda") and resolve_channels_last(True, "cpu")
    assert not resolve_channels_last("false", "cpu") and resolve_channels_last("TRUE", "cpu")
    with pytest.raises(ValueError, match="channels_last"):
        resolve_channels_last("sometimes", "cpu")
    cfg = load_yaml(os.path.join(REPO, TINY_MODEL))
    torch.manual_seed(0)
    nchw = create_model(**cfg, channels_last=False)
    torch.manual_seed(0)
    nhwc = create_model(**cfg, channels_last=True)
    assert nhwc.channels_last and not nchw.channels_last
    assert nhwc.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    nhwc.load_state_dict(nchw.state_dict())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.allclose(nchw(x, t), nhwc(x, t), atol=1e-5)


def test_half_precision_keeps_float32_io(tiny):
    cfg = load_yaml(os.path.join(REPO, TINY_MODEL))
    torch.manual_seed(0)
    half = create_model(**dict(cfg, use_fp16=True))
    half.load_state_dict(tiny.state_dict())
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([100])
    with torch.no_grad():
        out, ref = half(x, t), tiny(x, t)
    assert out.dtype == torch.float32 and next(half.parameters()).dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3    # bf16 on CPU: a few parts in 1000


def test_speed_benchmark_end_to_end(tmp_path, monkeypatch):
    from benchmarks import speed
    monkeypatch.setitem(speed.SIZES, "tiny", {"model": TINY_MODEL, "tasks": "configs/MNIST/DDIM"})
    args = speed.parse_args(["--sizes", "tiny", "--solvers", "CoDPS+", "--operators", "inpainting",
                             "--warmup", "0", "--repeats", "1",
                             "--batches", "1,2", "--out", str(tmp_path), "--mnist_ckpt", str(tmp_path / "none.pt"),
                             "--device", "cpu"])
    res = speed.run(args)
    data = json.loads((tmp_path / "speed_cpu.json").read_text())
    md = (tmp_path / "speed_cpu.md").read_text()
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["threads"] >= 1
    assert data["machine"]["device"] == "cpu"
    sec = data["sizes"]["tiny"]
    ops = {r["operator"] for r in sec["dc"]}
    assert {"gaussian_blur", "motion_blur", "super_resolution", "inpainting"} <= ops
    assert all(r["CoDPS+_ms"] > 0 for r in sec["dc"] if "skipped" not in r)
    steps = [r for r in sec["steps"] if "skipped" not in r]
    assert [r["solver"] for r in steps] == ["plain (ddim)", "CoDPS+"]
    assert all(r["network_calls_per_step"] == 1 for r in steps)
    assert [r["solver"] for r in sec["memory"]] == ["none", "CoDPS+"]
    assert all(r["peak_rss_mb"] > 0 for r in sec["memory"]), sec["memory"]
    assert [r["batch"] for r in sec["batch"]] == [1, 2] and all(r["nfe_ok"] for r in sec["batch"])
    assert [r["mode"] for r in sec["precision"]] == ["fp32", "channels_last", "bf16", "bf16+channels_last"]
    assert "## tiny" in md and "CoDPS+ step against batch size" in md and "Precision and memory layout" in md
    assert res["written"][0].endswith("speed_cpu.json")


def test_psnr_mode(tmp_path):
    from benchmarks import speed
    missing = speed.run(speed.parse_args(["--psnr", "--device", "cpu", "--out", str(tmp_path),
                                          "--mnist_ckpt", str(tmp_path / "none.pt")]))
    assert "not found" in missing["precision_psnr"]["skipped"]
    assert "Skipped:" in (tmp_path / "precision_psnr_cpu.md").read_text()
    ckpt = os.path.join(REPO, "ckpts", "mnist32.pt")
    if not os.path.isfile(ckpt):
        pytest.skip("ckpts/mnist32.pt (the embedded prior) is not here")
    res = speed.run(speed.parse_args(["--psnr", "--device", "cpu", "--out", str(tmp_path), "--psnr_tasks",
                                      "inpainting", "--psnr_images", "2", "--psnr_respacing", "3"]))
    row = res["precision_psnr"]["tasks"][0]
    assert row["images"] == 2 and res["precision_psnr"]["steps"] == 3
    assert abs(row["mean_diff_db"]) < 1.0 and row["psnr_fp32"] > 0


def test_quick_run_does_not_write_into_committed_results(tmp_path, monkeypatch):
    """``--quick`` without ``--out`` writes to a new temporary folder, never benchmarks/results/
    (whose files are committed); a full run and an explicit ``--out`` keep their folders."""
    import tempfile
    from benchmarks import speed
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert speed.parse_args(["--quick"]).out is None
    quick = speed.output_folder(None, quick=True)
    assert os.path.isdir(quick) and os.path.dirname(quick) == str(tmp_path)
    assert os.path.abspath(quick) != os.path.abspath(speed.RESULTS)
    assert speed.output_folder(None, quick=False) == speed.RESULTS
    assert speed.output_folder(str(tmp_path / "x"), quick=True) == str(tmp_path / "x")


def test_tables_subset_and_cpu_clock(tmp_path, monkeypatch):
    """``--tables`` runs only the tables named; ``--clock cpu`` times with the process's CPU clock
    (recorded, and said in the report, with the load average); a bad table name is refused."""
    import time
    from benchmarks import speed
    monkeypatch.setitem(speed.SIZES, "tiny", {"model": TINY_MODEL, "tasks": "configs/MNIST/DDIM"})
    calls = []
    monkeypatch.setitem(speed.CLOCKS, "cpu", lambda: calls.append(1) or time.process_time())
    monkeypatch.setattr(speed, "_CLOCK", ["wall"])
    res = speed.run(speed.parse_args(["--sizes", "tiny", "--solvers", "CoDPS+", "--operators", "inpainting",
                                      "--warmup", "0", "--repeats", "1", "--tables", "steps", "--clock", "cpu",
                                      "--out", str(tmp_path), "--device", "cpu"]))
    sec = res["sizes"]["tiny"]
    assert set(sec) == {"model", "forward", "steps"} and res["clock"] == "cpu" and calls
    assert [r["solver"] for r in sec["steps"] if "skipped" not in r] == ["plain (ddim)", "CoDPS+"]
    md = (tmp_path / "speed_cpu.md").read_text()
    assert "--clock cpu" in md and "Load average" in md and "Data-consistency" not in md
    with pytest.raises(ValueError, match="--tables: unknown table"):
        speed.run(speed.parse_args(["--tables", "steps,bogus", "--device", "cpu", "--out", str(tmp_path)]))
