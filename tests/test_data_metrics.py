"""Datasets (folders, .npz), the folder resizer, metrics (PSNR / SSIM / LPIPS) and atomic writes."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import REPO, cli_env, make_images
from data.dataloader import DataError, UnreadableImageError, get_dataset, list_datasets
from util.image_io import read_csv, save_json, save_npy, save_png, write_csv
from util.metrics import LPIPSMetric, alexnet_weights_path, psnr, ssim, to_unit


def test_folder_dataset_recursive_sorted_and_converted(tmp_path, caplog):
    make_images(tmp_path / "b", n=1, size=32)
    make_images(tmp_path / "a", n=2, size=48, ext="jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = get_dataset("folder", str(tmp_path), image_size=32, channels=1)
    assert ds.names == ["a/img_00.jpg", "a/img_01.jpg", "b/img_00.png"]
    with caplog.at_level(logging.WARNING):
        xs = [ds.load(i) for i in range(3)]
    assert all(x.shape == (1, 32, 32) and x.dtype == torch.float32 for x in xs)
    assert all(-1 <= float(x.min()) and float(x.max()) <= 1 for x in xs)
    assert sum("centre-cropping" in r.message for r in caplog.records) == 1   # one warning for two resized
    assert ds.resized == 2
    assert get_dataset("ffhq", str(tmp_path), 32).load(2).shape == (3, 32, 32)


def test_unreadable_image_raises(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    ds = get_dataset("imagenet", str(tmp_path), 32)
    with pytest.raises(UnreadableImageError, match="x.png"):
        ds.load(0)


def test_npz_dataset(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=arr)
    ds = get_dataset("imagenet", str(tmp_path / "ref.npz"), 32)
    assert len(ds) == 2 and ds.names == ["00000", "00001"]
    x = ds.load(1)
    np.testing.assert_allclose(((x + 1) * 127.5).round().numpy().transpose(1, 2, 0), arr[1], atol=0)


@pytest.mark.parametrize("setup,match", [("missing", "does not exist"), ("empty", "holds no"),
                                         ("bad_npz", "expected uint8"), ("name", "unknown dataset")])
def test_dataset_errors(tmp_path, setup, match):
    name, root = "folder", tmp_path / "missing"
    if setup == "empty":
        root = tmp_path
    elif setup == "bad_npz":
        root = tmp_path / "x.npz"
        np.savez(root, arr_0=np.zeros((2, 4), dtype=np.float32))
    elif setup == "name":
        name = "nope"
    with pytest.raises(DataError, match=match):
        get_dataset(name, str(root), 32)
    assert {"ffhq", "imagenet", "folder"} <= set(list_datasets())


def test_data_resizer(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8)).save(src / "wide.jpg")
    (src / "broken.png").write_bytes(b"garbage")
    cmd = [sys.executable, "-m", "data.data_resizer", "--src", str(src), "--dst", str(tmp_path / "dst"),
           "--size", "64"]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "dst" / "wide.png") as img:
        assert img.size == (64, 64)
    assert "skipping broken.png" in proc.stderr
    (tmp_path / "none").mkdir()
    proc = subprocess.run(cmd[:4] + [str(tmp_path / "none")] + cmd[5:], cwd=REPO, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "holds no" in proc.stderr


def test_psnr_ssim_clip_and_minmax():
    ref = torch.zeros(1, 3, 16, 16)
    x = ref + 0.2                             # 0.1 on the [0, 1] scale
    assert psnr(x, ref)[0] == pytest.approx(20.0, abs=1e-4)
    assert psnr(ref, ref)[0] == float("inf")
    assert ssim(ref, ref)[0] == pytest.approx(1.0)
    # min-max: a constant offset vanishes once each image is stretched
    ramp = torch.linspace(-0.5, 0.5, 16).expand(1, 3, 16, 16)
    assert psnr(ramp + 0.3, ramp, "minmax")[0] > 100
    assert psnr(ramp + 0.3, ramp, "clip")[0] < 20
    assert to_unit(ramp, "minmax").min() == 0 and to_unit(ramp, "minmax").max() == 1
    assert to_unit(torch.tensor([[[[-3.0, 3.0]]]]), "clip").tolist() == [[[[0.0, 1.0]]]]
    with pytest.raises(ValueError, match="clip, minmax"):
        to_unit(ref, "nope")


def test_lpips_without_weights_warns_once_and_stays_empty(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        metric = LPIPSMetric()
    assert not metric.available
    assert metric(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)) == [None, None]
    warnings = [r.message for r in caplog.records if "LPIPS" in r.message]
    assert len(warnings) == 1 and alexnet_weights_path() in warnings[0] and "alexnet" in warnings[0]


def test_lpips_with_cached_backbone(tmp_path, monkeypatch):
    """With (here random) AlexNet weights in the hub cache, LPIPS is computed, offline."""
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = alexnet_weights_path()
    Path(path).parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    metric = LPIPSMetric()
    assert metric.available
    x = torch.rand(2, 1, 28, 28) * 2 - 1      # grayscale and small: repeated and upsampled
    d = metric(x, x.flip(0))
    assert len(d) == 2 and all(v >= 0 for v in d)
    assert metric(x, x) == pytest.approx([0.0, 0.0], abs=1e-6)


def test_atomic_writes(tmp_path):
    save_png(str(tmp_path / "a" / "x.png"), torch.rand(3, 8, 8))
    save_png(str(tmp_path / "g.png"), torch.full((1, 4, 4), float("nan")))
    save_npy(str(tmp_path / "k.npy"), np.eye(3))
    save_json(str(tmp_path / "s.json"), {"t": (1, 2), "nan": float("nan"), "np": np.float32(0.5)})
    write_csv(str(tmp_path / "m.csv"), ["image", "psnr"], [{"image": "00000", "psnr": None}])
    assert read_csv(str(tmp_path / "m.csv")) == [{"image": "00000", "psnr": ""}]
    assert (tmp_path / "s.json").read_text().replace(" ", "").replace("\n", "") == '{"t":[1,2],"nan":null,"np":0.5}'
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), np.eye(3))
    with Image.open(tmp_path / "a" / "x.png") as img:
        assert img.size == (8, 8) and img.mode == "RGB"
    # a failing write leaves the old file and no temporary behind
    (tmp_path / "keep.npy").write_bytes(b"old")

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        save_npy(str(tmp_path / "keep.npy"), Boom())
    assert (tmp_path / "keep.npy").read_bytes() == b"old"
    assert not list(tmp_path.rglob("*.tmp"))
