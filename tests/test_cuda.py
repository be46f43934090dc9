"""CUDA checks (skipped without a GPU; run by benchmarks/gpu_check.sh): the half type and layout
chosen on the GPU, half-precision and compiled forwards against fp32 eager, and a CoDPS+ run of
main.py on the GPU whose results do not depend on the batch size and whose summary.json records
the precision."""
from __future__ import annotations

import json
import os

import pytest
import torch

from cli_helpers import REPO, TINY_MODEL, make_images, run_dir, run_main, tiny_args
from guided_diffusion import precision as P
from guided_diffusion.unet import create_model
from util.config import load_yaml

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture()
def cfg():
    return load_yaml(os.path.join(REPO, TINY_MODEL))


def _weights(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_capabilities_and_auto_half_type(cfg):
    caps = P.detect_capabilities("cuda")
    assert caps.device_type == "cuda" and "sm_" in caps.machine
    model = create_model(**dict(cfg, use_fp16="auto", channels_last="auto"), device="cuda")
    rec = model.speed_settings
    assert rec["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert set(rec["speed_probe"]["seconds"]) == {rec["precision"], rec["precision"] + "+channels_last"}
    assert next(model.parameters()).device.type == "cuda"


def test_half_and_compiled_forwards_match_fp32(cfg):
    ref = _weights(create_model(**dict(cfg, use_fp16=False, channels_last=False, compile=False), device="cuda"))
    half = create_model(**dict(cfg, use_fp16=True, channels_last=True, compile=False), device="cuda")
    half.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).cuda()
    t = torch.tensor([10, 200, 500, 900], device="cuda")
    with torch.no_grad():
        a, b = ref(x, t), half(x, t)
        compiled = torch.compile(ref)
        c = compiled(x, t)
    assert b.dtype == torch.float32 and a.abs().mean() > 0.01
    assert (a - b).norm() / a.norm() < 0.02
    assert (a - c).norm() / a.norm() < 1e-3


def test_main_on_cuda_batch_invariant_and_recorded(tmp_path):
    data = tmp_path / "data"
    make_images(data, n=2)
    psnrs = {}
    for batch in (1, 2):
        out = tmp_path / f"out{batch}"
        proc = run_main(tiny_args("inpainting", data, out) + ["--device", "cuda", "--batch_size", str(batch),
                                                              "diffusion.timestep_respacing=ddim5"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((run_dir(out, "inpainting") / "summary.json").read_text())
        assert summary["device"].startswith("cuda") and summary["precision"] == "fp32"   # tiny config: false
        psnrs[batch] = summary["metrics"]["psnr"]["mean"]
    assert abs(psnrs[1] - psnrs[2]) < 0.05
