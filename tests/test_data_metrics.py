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


def _png_rgb16(path: Path, rgb: np.ndarray) -> None:
    """Write (H, W, 3) uint16 values as a 48-bit RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].astype(">u2").tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _eight_bit(v: float) -> float:
    return v / 127.5 - 1.0


#: file name -> (writer, expected 8-bit grey value, expected 8-bit RGB value) of a uniform image.
def _mode_files():
    g16 = np.full((4, 4), 30000, dtype=np.uint16)          # 30000 / 65535 of white -> 117, not 255
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.info["transparency"] = 0
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))      # pure red
    return {
        "i16.png": (lambda p: Image.fromarray(g16).save(p), 117, (117, 117, 117)),
        "rgb48.png": (lambda p: _png_rgb16(p, np.stack([g16, g16 // 2, g16 * 0], -1)), None, (117, 58, 0)),
        "l.png": (lambda p: Image.new("L", (4, 4), 77).save(p), 77, (77, 77, 77)),
        "one.png": (lambda p: Image.new("1", (4, 4), 1).save(p), 255, (255, 255, 255)),
        "la.png": (lambda p: Image.new("LA", (4, 4), (90, 0)).save(p), 90, (90, 90, 90)),
        "p.png": (lambda p: pal.save(p), None, (10, 200, 30)),
        "rgba.png": (lambda p: Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(p), None, (10, 20, 30)),
        "rgb.png": (lambda p: Image.new("RGB", (4, 4), (10, 20, 30)).save(p), None, (10, 20, 30)),
        "cmyk.jpg": (lambda p: cmyk.save(p, quality=100), None, (255, 0, 0)),
    }


@pytest.mark.parametrize("name", sorted(_mode_files()))
def test_every_mode_and_bit_depth_decodes_to_its_values(tmp_path, name):
    """Files of every PIL mode a png / jpg can hold load with their values: a 16-bit grey 30000 of
    65535 becomes 117 of 255 (it was read as white, 255), alpha is dropped, palettes are looked up."""
    write, grey, rgb = _mode_files()[name]
    write(tmp_path / name)
    with Image.open(tmp_path / name) as img:
        mode = img.mode
    x3 = get_dataset("folder", str(tmp_path), image_size=4, channels=3).load(0)
    tol = 2.5 / 127.5 if name.endswith(".jpg") else 1e-6
    np.testing.assert_allclose(x3.numpy(), np.broadcast_to(np.array([_eight_bit(v) for v in rgb],
                                                                    dtype=np.float32)[:, None, None], (3, 4, 4)),
                               atol=tol, err_msg=mode)
    x1 = get_dataset("folder", str(tmp_path), image_size=4, channels=1).load(0)
    expect = grey if grey is not None else round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])
    np.testing.assert_allclose(x1.numpy(), _eight_bit(expect), atol=max(tol, 1 / 127.5), err_msg=mode)


@pytest.mark.parametrize("mode, value, expect", [
    ("F", 0.5, 128), ("I;16B", 65535, 255), ("I;16L", 257, 1), ("RGBX", (10, 20, 30, 0), 18), ("I", 30000, 117),
    ("YCbCr", (100, 128, 128), 100), ("HSV", (0, 0, 200), 200), ("La", (100, 255), 100),
    ("RGBa", (50, 50, 50, 255), 50), ("PA", None, 0)])
def test_in_memory_modes_decode(mode, value, expect):
    from data.dataloader import to_model_image
    img = Image.new(mode, (2, 2)) if value is None else Image.new(mode, (2, 2), value)
    x, changed = to_model_image(img, 2, 1)
    assert not changed
    np.testing.assert_allclose(x.numpy(), _eight_bit(expect), atol=1.01 / 127.5)


@pytest.mark.parametrize("mode, value, needle", [
    ("F", 2.0, "outside [0, 1]"), ("F", float("nan"), "not finite"), ("I", 70000, "16-bit"), ("I", -1, "16-bit"),
    ("LAB", (50, 0, 0), "unsupported image mode 'LAB'")])
def test_undecodable_modes_are_refused_in_one_line(mode, value, needle):
    from data.dataloader import to_model_image
    with pytest.raises(ValueError, match=__import__("re").escape(needle)) as info:
        to_model_image(Image.new(mode, (2, 2), value), 2, 3)
    assert "\n" not in str(info.value)
