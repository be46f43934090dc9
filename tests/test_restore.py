"""Restoring measurements that are already degraded (``--measurement_dir``, fixed user kernels and
masks), the run's pictures (grid.png, --record strips), output folders named after the task
config, the run's progress report, and batch_command.sh's choice of configs."""
from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image

from cli_helpers import (REPO, assert_clean_failure, cli_env, make_images, read_rows, run_dir, run_inproc,
                         tiny_args)
from util.grid import abs_error, compose, strip_steps, write_run_grid, zoom_for, GAP, HEADER
from util.layout import run_dir as layout_run_dir
from util.layout import task_name
from util.measurement_io import (MeasurementError, fit_kernel, read_kernel, read_mask, read_measurement,
                                 set_params)
from util.metrics import data_fit_residual
from util.progress import RunProgress

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Overrides of tiny_args for each task (32x32 images: 9x9 motion kernels; SR x4 gives 8x8).
EXTRA = {"motion_deblur": ["task.measurement.operator.kernel_size=9"], "super_resolution": [], "inpainting": []}


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).copy()


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


# ---- the round trip: run -> --measurement_dir on its output folder -> the same reconstructions ----------

@pytest.mark.parametrize("task", ["motion_deblur", "super_resolution", "inpainting"])
def test_round_trip_gives_the_same_reconstructions(tmp_path, task, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=3)
    args = tiny_args(task, data, tmp_path / "out") + EXTRA[task] + ["--batch_size", "2"]
    ok(run_inproc(args, tmp_path, monkeypatch, capsys))
    first = run_dir(tmp_path / "out", task)
    names = ["00000", "00001", "00002"]
    y = np.load(first / "measurement" / "00000.npy")
    assert y.dtype == np.float32 and y.shape == ((3, 8, 8) if task == "super_resolution" else (3, 32, 32))
    # feed the output folder back; task.data is not read (its root need not exist), another batch size
    again = tiny_args(task, tmp_path / "nowhere", tmp_path / "out") + EXTRA[task] + [
        "--batch_size", "3", "--measurement_dir", str(first)]
    proc = ok(run_inproc(again, tmp_path, monkeypatch, capsys))
    second = tmp_path / "out" / "FFHQ" / "DDIM" / f"{task}_on_{task}"
    for name in names:
        np.testing.assert_array_equal(pixels(second / "recon" / f"{name}.png"), pixels(first / "recon" / f"{name}.png"))
        np.testing.assert_array_equal(np.load(second / "measurement" / f"{name}.npy"),
                                      np.load(first / "measurement" / f"{name}.npy"))
        np.testing.assert_array_equal(np.load(second / "params" / f"{name}.npy"),
                                      np.load(first / "params" / f"{name}.npy"))
    rows1, rows2 = read_rows(first / "metrics.csv"), read_rows(second / "metrics.csv")
    assert [r["residual"] for r in rows2] == [r["residual"] for r in rows1]
    assert all(float(r["psnr"]) > 0 for r in rows1)
    # the run's folder has label/: its ground truth gives the same scores as the run itself
    assert [(r["psnr"], r["ssim"], r["lpips"]) for r in rows2] == [(r["psnr"], r["ssim"], r["lpips"]) for r in rows1]
    summary = json.loads((second / "summary.json").read_text())
    summary1 = json.loads((first / "summary.json").read_text())
    assert summary["measurement_dir"] == str(first)
    assert summary["metrics"]["psnr"]["mean"] == summary1["metrics"]["psnr"]["mean"] is not None
    assert summary["metrics"]["residual"]["n"] == 3
    assert summary["images"] == {n: f"{n}.npy" for n in names}
    for name in names:
        np.testing.assert_array_equal(pixels(second / "label" / f"{name}.png"), pixels(first / "label" / f"{name}.png"))
    last = proc.stdout.strip().splitlines()[-1]
    assert f"mean PSNR {summary['metrics']['psnr']['mean']:.2f} dB" in last
    # the same measurements without label/: no ground truth, no scores, no label column in the grid
    bare = tmp_path / "bare"
    for sub in ("measurement", "params"):
        shutil.copytree(first / sub, bare / sub)
    proc = ok(run_inproc(tiny_args(task, tmp_path / "nowhere", tmp_path / "out") + EXTRA[task] + [
        "--batch_size", "3", "--measurement_dir", str(bare)], tmp_path, monkeypatch, capsys))
    third = tmp_path / "out" / "FFHQ" / "DDIM" / f"{task}_on_bare"
    rows3 = read_rows(third / "metrics.csv")
    assert [r["residual"] for r in rows3] == [r["residual"] for r in rows1]
    assert all(r["psnr"] == r["ssim"] == r["lpips"] == "" and r["status"] == "ok" for r in rows3)
    assert json.loads((third / "summary.json").read_text())["metrics"]["psnr"]["mean"] is None
    assert not (third / "label").exists()
    # the grid: input | reconstruction | label | |error| with a ground truth, input | reconstruction without
    g1, g2, g3 = pixels(first / "grid.png"), pixels(second / "grid.png"), pixels(third / "grid.png")
    tile = 32 * zoom_for(32)
    assert g1.shape == g2.shape and g3.shape[0] == g1.shape[0] == HEADER + 3 * (tile + GAP) + GAP
    assert g1.shape[1] - g3.shape[1] == 2 * (tile + GAP)
    last = proc.stdout.strip().splitlines()[-1]
    assert "restored 3 images (no ground truth: no PSNR / SSIM / LPIPS)" in last and "n/a" not in last
    assert "LPIPS column left empty" not in proc.stderr   # no LPIPS set-up (or warning) without ground truth
    # a label/ folder must cover every measurement
    (bare / "label").mkdir()
    shutil.copy(first / "label" / "00000.png", bare / "label" / "00000.png")
    bad = run_inproc(tiny_args(task, tmp_path / "nowhere", tmp_path / "out2") + EXTRA[task] + [
        "--measurement_dir", str(bare)], tmp_path, monkeypatch, capsys)
    assert bad.returncode == 2 and "holds the ground truth of 1 of 3 measurements (none for 00001, 00002)" in bad.stderr
    # one plain progress line per batch (stderr is no terminal here), no carriage returns
    assert "progress: 3/3 images (100%)" in proc.stderr and "\r" not in proc.stderr
    # resuming in measurement mode skips the finished images
    proc = ok(run_inproc(again, tmp_path, monkeypatch, capsys))
    assert "3 of 3 images already done" in proc.stderr


# ---- user measurements: PNG / JPEG, kernels as .npy, masks as PNG ------------------------------------------

def _clean(n: int = 2, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=gen) * 2 - 1
    return F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)


def _save_image(path, y: torch.Tensor, fmt: str = "PNG") -> np.ndarray:
    arr = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return pixels(path)


def test_user_blur_pngs_with_kernel_files(tmp_path, monkeypatch, capsys):
    """A blurred PNG and a blurred JPEG, each with its own 7x7 kernel (not normalised) under params/,
    restored with the motion_blur operator of kernel_size 9."""
    from operators import get_operator
    root = tmp_path / "mine"
    (root / "measurement").mkdir(parents=True)
    (root / "params").mkdir()
    rng = np.random.default_rng(0)
    kernels = [rng.random((7, 7)) * 3 for _ in range(2)]
    op = get_operator("motion_blur", kernel_size=9, intensity=0.5)
    set_params(op, [fit_kernel(k / k.sum(), 9, "k") for k in kernels], (2, 3, 32, 32))
    y = op.forward(_clean())
    saved = [_save_image(root / "measurement" / "a.png", y[0]),
             _save_image(root / "measurement" / "b.jpg", y[1], "JPEG")]
    for stem, k in zip(("a", "b"), kernels):
        np.save(root / "params" / f"{stem}.npy", k)
    args = tiny_args("motion_deblur", tmp_path / "nowhere", tmp_path / "out") + EXTRA["motion_deblur"] + [
        "--measurement_dir", str(root), "--batch_size", "2"]
    ok(run_inproc(args, tmp_path, monkeypatch, capsys))
    out = tmp_path / "out" / "FFHQ" / "DDIM" / "motion_deblur_on_mine"
    for n, (k, img) in enumerate(zip(kernels, saved)):
        np.testing.assert_allclose(np.load(out / "params" / f"0000{n}.npy"), fit_kernel(k / k.sum(), 9, "k"),
                                   atol=1e-15)
        np.testing.assert_array_equal(np.load(out / "measurement" / f"0000{n}.npy"),
                                      img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
    rows = read_rows(out / "metrics.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(float(r["residual"]) > 0 for r in rows)
    assert json.loads((out / "summary.json").read_text())["images"] == {"00000": "a.png", "00001": "b.jpg"}


def test_user_low_resolution_png_and_masked_png(tmp_path, monkeypatch, capsys):
    from operators import get_operator
    x = _clean(1)
    # super-resolution x4: the 8x8 low-resolution image
    sr = tmp_path / "sr"
    (sr / "measurement").mkdir(parents=True)
    low = _save_image(sr / "measurement" / "small.png", get_operator("super_resolution", scale_factor=4)(x)[0])
    args = tiny_args("super_resolution", tmp_path / "nowhere", tmp_path / "out") + ["--measurement_dir", str(sr)]
    ok(run_inproc(args, tmp_path, monkeypatch, capsys))
    out = tmp_path / "out" / "FFHQ" / "DDIM" / "super_resolution_on_sr"
    assert low.shape == (8, 8, 3)
    np.testing.assert_array_equal(np.load(out / "measurement" / "00000.npy"),
                                  low.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
    assert pixels(out / "input" / "00000.png").shape == (32, 32, 3) and (out / "grid.png").is_file()
    # inpainting: a photo with a hole (anything in it) and a black-and-white mask PNG
    inp = tmp_path / "holes"
    (inp / "measurement").mkdir(parents=True)
    (inp / "params").mkdir()
    mask = np.ones((32, 32), np.uint8) * 255
    mask[8:20, 10:24] = 0
    Image.fromarray(mask).save(inp / "params" / "photo.png")
    photo = _save_image(inp / "measurement" / "photo.png", x[0])
    args = tiny_args("inpainting", tmp_path / "nowhere", tmp_path / "out") + ["--measurement_dir", str(inp)]
    ok(run_inproc(args, tmp_path, monkeypatch, capsys))
    out = tmp_path / "out" / "FFHQ" / "DDIM" / "inpainting_on_holes"
    m = (mask == 255).astype(np.float64)
    np.testing.assert_array_equal(np.load(out / "params" / "00000.npy"), m)
    y_photo = photo.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(np.load(out / "measurement" / "00000.npy"), y_photo * m[None].astype(np.float32))


def test_fixed_kernel_and_mask_in_the_task_config(tmp_path, monkeypatch, capsys):
    """operator.kernel / operator.mask: every image uses the user's kernel or mask (normal runs)."""
    data = tmp_path / "data"
    make_images(data, n=2)
    kernel = np.zeros((4, 6))
    kernel[1, :] = 2.0                                # a horizontal line, even-sized, sum 12
    np.save(tmp_path / "k.npy", kernel)
    args = tiny_args("motion_deblur", data, tmp_path / "out") + [
        f"task.measurement.operator.kernel={tmp_path / 'k.npy'}", "--batch_size", "2"]
    ok(run_inproc(args, tmp_path, monkeypatch, capsys))
    out = run_dir(tmp_path / "out", "motion_deblur")
    expected = fit_kernel(kernel / 12.0, 7, "k")    # padded to 7x7, centre (2, 3) -> (3, 3)
    assert expected[2, 0:6].tolist() == [1 / 6] * 6 and expected.sum() == pytest.approx(1)
    for name in ("00000", "00001"):
        np.testing.assert_array_equal(np.load(out / "params" / f"{name}.npy"), expected)
    mask = np.full((32, 32), 255, np.uint8)
    mask[::3] = 0
    Image.fromarray(mask).save(tmp_path / "m.png")
    args = tiny_args("inpainting", data, tmp_path / "out") + [f"task.measurement.operator.mask={tmp_path / 'm.png'}"]
    ok(run_inproc(args, tmp_path, monkeypatch, capsys))
    out = run_dir(tmp_path / "out", "inpainting")
    for name in ("00000", "00001"):
        np.testing.assert_array_equal(np.load(out / "params" / f"{name}.npy"), (mask == 255).astype(float))
        y = np.load(out / "measurement" / f"{name}.npy")
        assert np.all(y[:, ::3] == 0) and np.all(y[:, 1::3] != 0)   # y is zero exactly in the holes


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------------------

def _bad_dirs(tmp):
    """DIRs of the bad cases: (task, extra args, needles)."""
    blur = tmp / "blur_no_kernel"
    (blur / "measurement").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(blur / "measurement" / "x.png")
    big = tmp / "sr_too_big"
    (big / "measurement").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(big / "measurement" / "x.png")
    grey = tmp / "grey_mask"
    (grey / "measurement").mkdir(parents=True)
    (grey / "params").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(grey / "measurement" / "x.png")
    mask = np.full((32, 32), 255, np.uint8)
    mask[4:8, 4:8] = 128
    Image.fromarray(mask).save(grey / "params" / "x.png")
    npy = tmp / "wrong_npy"
    (npy / "measurement").mkdir(parents=True)
    np.save(npy / "measurement" / "x.npy", np.zeros((3, 32, 32), np.float32))
    np.save(tmp / "k.npy", np.ones((3, 3)))
    return {
        "missing kernel": ("motion_deblur", ["--measurement_dir", str(blur)] + EXTRA["motion_deblur"],
                           ["missing kernel", "params", "x.npy"]),
        "shape mismatch": ("super_resolution", ["--measurement_dir", str(big)], ["16x16", "expects 3x8x8"]),
        "npy shape mismatch": ("super_resolution", ["--measurement_dir", str(npy)], ["3x32x32", "expects 3x8x8"]),
        "mask not binary": ("inpainting", ["--measurement_dir", str(grey)], ["not binary", "grey_mask/params/x.png"]),
        "no measurement folder": ("inpainting", ["--measurement_dir", str(tmp)], ["no measurement/ folder"]),
        "missing measurement_dir": ("inpainting", ["--measurement_dir", str(tmp / "nope")], ["does not exist"]),
        "kernel for a fixed operator": ("gaussian_deblur", [f"task.measurement.operator.kernel={tmp / 'k.npy'}",
                                                            "task.measurement.operator.kernel_size=9"],
                                        ["gaussian_blur", "takes no kernel", "motion_blur"]),
        "missing kernel file": ("motion_deblur", ["task.measurement.operator.kernel=/nonexistent/k.npy"],
                                ["/nonexistent/k.npy", "does not exist"]),
        "mask file of another size": ("inpainting", [f"task.measurement.operator.mask={big / 'measurement' / 'x.png'}"],
                                      ["16x16", "32x32"]),
    }


def test_bad_measurements(tmp_path, monkeypatch, capsys):
    make_images(tmp_path / "data", n=1)
    for case, (task, extra, needles) in _bad_dirs(tmp_path).items():
        save = tmp_path / f"save_{case.replace(' ', '_')}"
        proc = run_inproc(tiny_args(task, tmp_path / "data", save) + extra, tmp_path, monkeypatch, capsys)
        assert_clean_failure(proc, *needles)
        assert not save.exists(), case


# ---- small parts -------------------------------------------------------------------------------------------

def test_kernels_convolve_and_the_papers_code_correlates():
    """Our operators convolve (scipy.ndimage.convolve, periodic); F.conv2d (the paper's code)
    correlates, which is the same as convolving with the kernel rotated by 180 degrees."""
    from operators import get_operator
    rng = np.random.default_rng(1)
    k = rng.random((5, 5))
    k[0, 0] = 5.0                      # clearly asymmetric
    k /= k.sum()
    x = rng.standard_normal((1, 1, 16, 16))
    op = get_operator("motion_blur", kernel_size=5, intensity=0.0)
    set_params(op, [k], (1, 1, 16, 16))
    ours = op.forward(torch.from_numpy(x)).numpy()[0, 0]
    np.testing.assert_allclose(ours, scipy.ndimage.convolve(x[0, 0], k, mode="wrap"), atol=1e-12)
    padded = F.pad(torch.from_numpy(x), (2, 2, 2, 2), mode="circular")
    papers = F.conv2d(padded, torch.from_numpy(k)[None, None]).numpy()[0, 0]
    set_params(op, [np.rot90(k, 2).copy()], (1, 1, 16, 16))
    np.testing.assert_allclose(op.forward(torch.from_numpy(x)).numpy()[0, 0], papers, atol=1e-12)
    assert np.abs(ours - papers).max() > 1e-2


def test_readers(tmp_path):
    np.save(tmp_path / "k.npy", np.array([[0.0, 2.0], [2.0, 0.0]]))
    np.testing.assert_array_equal(read_kernel(str(tmp_path / "k.npy")), [[0, 0.5], [0.5, 0]])
    np.save(tmp_path / "neg.npy", -np.ones((3, 3)))
    with pytest.raises(MeasurementError, match="sums to"):
        read_kernel(str(tmp_path / "neg.npy"))
    with pytest.raises(MeasurementError, match="larger than the operator's kernel_size 3"):
        fit_kernel(np.ones((5, 5)), 3, "k")
    np.save(tmp_path / "m.npy", np.array([[0, 1], [1, 0.5]]))
    with pytest.raises(MeasurementError, match="not binary"):
        read_mask(str(tmp_path / "m.npy"), (2, 2))
    Image.fromarray(np.array([[0, 255], [255, 255]], np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(str(tmp_path / "m.png"), (2, 2)), [[0, 1], [1, 1]])
    Image.fromarray(np.array([[0, 255], [255, 255]], np.uint8)).convert("1").save(tmp_path / "bw.png")
    np.testing.assert_array_equal(read_mask(str(tmp_path / "bw.png"), (2, 2)), [[0, 1], [1, 1]])
    Image.fromarray(np.array([[[0, 255, 0]]], np.uint8)).save(tmp_path / "col.png")
    with pytest.raises(MeasurementError, match="colours"):
        read_mask(str(tmp_path / "col.png"), (1, 1))
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "y.png")
    assert read_measurement(str(tmp_path / "y.png"), (1, 1, 2)).tolist() == [[[-1.0, 1.0]]]
    assert read_measurement(str(tmp_path / "y.png"), (3, 1, 2))[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(MeasurementError, match="is 1x2 pixels"):
        read_measurement(str(tmp_path / "y.png"), (1, 2, 2))
    np.save(tmp_path / "y.npy", np.array([[np.nan]]))
    with pytest.raises(MeasurementError, match="NaN"):
        read_measurement(str(tmp_path / "y.npy"), (1, 1, 1))


def test_data_fit_residual_closed_form():
    y = torch.zeros(2, 1, 2, 2)
    ax = torch.tensor([[3.0, 4.0], [0.0, 0.0]]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    observed = torch.ones_like(y, dtype=torch.bool)
    observed[1, 0, 1] = False                        # image 1 measures only its first row
    res = data_fit_residual(y, ax, 0.5, observed)
    assert res == pytest.approx([5 / 2 / 0.5, 5 / np.sqrt(2) / 0.5])
    assert data_fit_residual(y, ax, 0.0, observed) == [None, None]


def test_grid_tiles_and_error_column(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {sub: rng.integers(0, 256, (8, 8), dtype=np.uint8) for sub in ("input", "recon", "label")}
    for sub, arr in imgs.items():
        (tmp_path / sub).mkdir()
        Image.fromarray(arr).save(tmp_path / sub / "00000.png")
    Image.fromarray(imgs["input"]).save(tmp_path / "input" / "00001.png")   # no recon, no label: empty tiles
    path = write_run_grid(str(tmp_path), ["00000", "00001", "00002"])
    grid = pixels(path)
    z = zoom_for(8)
    assert z == 16 and grid.shape[0] == HEADER + 2 * (8 * z + GAP) + GAP
    width = grid.shape[1]
    label_w = width - 4 * (8 * z + GAP) - GAP
    top = HEADER + GAP
    err = abs_error(np.stack([imgs["recon"]] * 3, -1), np.stack([imgs["label"]] * 3, -1))[..., 0]
    for c, expected in enumerate([imgs["input"], imgs["recon"], imgs["label"], err]):
        left = label_w + c * (8 * z + GAP) + GAP
        tile = grid[top:top + 8 * z:z, left:left + 8 * z:z, 0]
        np.testing.assert_array_equal(tile, expected)
    assert strip_steps(100) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    with pytest.raises(ValueError, match="no rows"):
        compose([], ["a"], [], 1)


def test_progress_is_one_run_with_eta():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    stream = Tty()
    prog = RunProgress(images=4, steps=10, stream=stream)
    assert prog.eta() is None
    for _ in range(10):
        prog.advance(2)
    prog.images_done(2)
    assert prog.done_steps == 20 and prog.eta() is not None and prog.eta() >= 0
    assert "images 2/4" in stream.getvalue() and "50%" in stream.getvalue()
    prog.close()
    plain = RunProgress(images=4, steps=10, stream=io.StringIO())
    assert plain.bar is None
    plain.images_done(4)
    assert plain.line().startswith("progress: 4/4 images (100%)")


# ---- output folders named after the task config ------------------------------------------------------------

def test_run_folders_are_named_after_the_task_config():
    assert task_name("configs/MNIST/DDIM/super_resolution_x4_config.yaml") == "MNIST/DDIM/super_resolution_x4"
    assert task_name(str(REPO / "configs/MNIST/DDPM/dps_inpainting_config.yaml")) == "MNIST/DDPM/dps_inpainting"
    assert task_name("elsewhere/my_task.yaml") == "my_task"
    shipped = sorted(p for p in (REPO / "configs").glob("*/*/*_config.yaml")
                     if p.name not in ("model_config.yaml", "diffusion_config.yaml"))
    folders = {layout_run_dir("results", str(p)) for p in shipped}
    assert len(folders) == len(shipped)   # every pair of shipped configs has its own folder


def test_shipped_configs_run_into_one_save_dir(tmp_path, monkeypatch, capsys):
    """Four MNIST runs (two SR factors, CoDPS+ and DPS inpainting) one after another into one
    --save_dir, with the embedded prior and three steps; a method other than the task config's
    own runs into <save_dir>/<dataset>/<sampler>/<method>_<task> (as its old per-method config did)."""
    save = tmp_path / "results"
    for rel, steps in (("DDIM/super_resolution_x2", "ddim3"), ("DDIM/super_resolution_x4", "ddim3"),
                       ("DDIM/inpainting", "ddim3"), ("DDPM/dps_inpainting", "3")):
        folder = rel.split("/")[0]
        method = ["--method", "DPS"] if "dps_" in rel else []   # another method: <method>_<task> folder
        args = ["--model_config", f"configs/MNIST/{folder}/model_config.yaml",
                "--diffusion_config", f"configs/MNIST/{folder}/diffusion_config.yaml",
                "--task_config", f"configs/MNIST/{rel.replace('dps_', '')}_config.yaml", "--save_dir", str(save),
                "--num_images", "1", f"diffusion.timestep_respacing={steps}"] + method
        ok(run_inproc(args, tmp_path, monkeypatch, capsys))
        out = save / "MNIST" / rel
        assert (out / "grid.png").is_file() and (out / "recon" / "00000.png").is_file()
    assert sorted(str(p.relative_to(save)) for p in save.glob("MNIST/*/*")) == [
        "MNIST/DDIM/inpainting", "MNIST/DDIM/super_resolution_x2", "MNIST/DDIM/super_resolution_x4",
        "MNIST/DDPM/dps_inpainting"]


def test_batch_command_runs_exactly_the_configs_each_folder_has(tmp_path):
    """With PYTHON=echo the script only prints the commands it would run."""
    env = cli_env(tmp_path)
    env.update(PYTHON="echo", datasets="MNIST FFHQ", sampling_types="DDIM", save_base_dir="out")
    proc = subprocess.run(["bash", "batch_command.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = sorted(line.split("--task_config ")[1].split()[0] for line in proc.stdout.splitlines()
                 if line.startswith("main.py"))
    expected = sorted(str(p.relative_to(REPO)) for d in ("MNIST/DDIM", "FFHQ/DDIM")
                      for p in (REPO / "configs" / d).glob("*_config.yaml")
                      if p.name not in ("model_config.yaml", "diffusion_config.yaml"))
    assert run == expected and any("super_resolution_x4" in r for r in run)
    # save_base_dir is the caller's (here the repository) folder, made absolute
    assert all(f"--save_dir {REPO / 'out'} " in line for line in proc.stdout.splitlines() if line.startswith("main.py"))
    assert proc.stdout.strip().splitlines()[-1] == f"{len(expected)} runs, {len(expected)} passed, 0 failed"
