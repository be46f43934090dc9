"""``python main.py`` end to end in a subprocess, with a tiny random-weight UNet (32 x 32, three
steps): every task, the outputs and metrics, resuming, per-image seeding, and bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cli_helpers import (REPO, TINY_DDIM, TINY_MODEL, assert_clean_failure, cli_env, make_images,
                         read_rows, run_dir, run_inproc, run_main, tiny_args)


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).copy()


def check_outputs(out, n_images: int, record: bool = False) -> dict:
    names = [f"{i:05d}" for i in range(n_images)]
    for sub in ("input", "label", "recon"):
        for name in names:
            assert (out / sub / f"{name}.png").is_file(), (sub, name)
    for name in names:   # y in its own geometry, for --measurement_dir
        assert np.load(out / "measurement" / f"{name}.npy").dtype == np.float32
    assert (out / "grid.png").is_file()
    rows = read_rows(out / "metrics.csv")
    assert [r["image"] for r in rows] == names
    assert list(rows[0]) == ["image", "psnr", "ssim", "lpips", "residual", "seconds", "nfe", "status"]
    for r in rows:
        assert r["status"] == "ok"
        assert np.isfinite(float(r["psnr"])) and -1 <= float(r["ssim"]) <= 1 and float(r["residual"]) > 0
        assert r["lpips"] == ""          # no AlexNet weights in the private torch hub
        assert int(r["nfe"]) == 3 and float(r["seconds"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["counts"]["ok"] == n_images
    assert summary["metrics"]["psnr"]["n"] == n_images and summary["metrics"]["psnr"]["mean"] is not None
    assert summary["metrics"]["lpips"]["mean"] is None
    assert set(summary["configs"]) == {"model", "diffusion", "task"}
    assert summary["seed"] == 22 and summary["device"] == "cpu" and "torch" in summary["versions"]
    assert not list(out.rglob("*.tmp"))
    if record:
        for name in names:
            assert sorted(p.name for p in (out / "progress" / name).iterdir()) == \
                ["x_0000.png", "x_0001.png", "x_0002.png"]
            assert (out / "progress" / f"{name}.png").is_file()   # the strip of the three steps
    return summary


@pytest.mark.parametrize("task", ["gaussian_deblur", "motion_deblur", "super_resolution", "inpainting"])
def test_every_task_end_to_end(tmp_path, task, monkeypatch, capsys):
    """gaussian_deblur in a real subprocess, the others in-process (faster)."""
    data = tmp_path / "data"
    make_images(data, n=2)
    extra = ["--batch_size", "2"]
    if task == "inpainting":
        extra += ["--record", "--metric_norm", "minmax"]
    if task == "gaussian_deblur":
        proc = run_main(tiny_args(task, data, tmp_path / "out") + extra, tmp_path)
    else:
        proc = run_inproc(tiny_args(task, data, tmp_path / "out") + extra, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    out = run_dir(tmp_path / "out", task)
    summary = check_outputs(out, 2, record=task == "inpainting")
    # the kernel or mask of each image
    for name in ("00000", "00001"):
        arr = np.load(out / "params" / f"{name}.npy")
        if task == "inpainting":
            assert arr.shape[-2:] == (32, 32) and set(np.unique(arr)) <= {0, 1}
        else:
            assert abs(arr.sum() - 1) < 1e-4
    # super-resolution inputs are shown upsampled to the image size
    assert pixels(out / "input" / "00000.png").shape[:2] == (32, 32)
    assert pixels(out / "recon" / "00000.png").shape == (32, 32, 3)
    # the final line: mean PSNR / SSIM / LPIPS and seconds per image
    last = proc.stdout.strip().splitlines()[-1]
    assert "mean PSNR" in last and "SSIM" in last and "LPIPS n/a" in last and "s per image" in last
    assert summary["metric_norm"] == ("minmax" if task == "inpainting" else "clip")
    if task == "super_resolution":
        assert summary["overrides"] == {"task.data.root": str(data),
                                        "task.measurement.operator.in_shape": [1, 3, 32, 32]}


@pytest.mark.parametrize("dps", [False, True], ids=["CoDPS", "DPS"])
def test_ddpm_configs(tmp_path, dps, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=1)
    args = tiny_args("gaussian_deblur", data, tmp_path / "out", sampler="DDPM", dps=dps)
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = check_outputs(run_dir(tmp_path / "out", "gaussian_deblur", "DDPM", dps), 1)
    assert summary["configs"]["task"]["conditioning"]["method"] == ("ps" if dps else "CoDPS")


def test_results_do_not_depend_on_batch_size(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=3)
    outs = []
    for bs in (1, 2):
        save = tmp_path / f"bs{bs}"
        args = tiny_args("inpainting", data, save) + ["--batch_size", str(bs)]
        proc = run_inproc(args, tmp_path, monkeypatch, capsys)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(run_dir(save, "inpainting"))
    for name in ("00000", "00001", "00002"):
        for sub in ("recon", "input"):
            a, b = pixels(outs[0] / sub / f"{name}.png"), pixels(outs[1] / sub / f"{name}.png")
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, (sub, name)
        np.testing.assert_array_equal(np.load(outs[0] / "params" / f"{name}.npy"),
                                      np.load(outs[1] / "params" / f"{name}.npy"))
    # different images get different masks
    assert not np.array_equal(np.load(outs[0] / "params" / "00000.npy"), np.load(outs[0] / "params" / "00001.npy"))


def test_resume_redoes_only_missing_images(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=3)
    args = tiny_args("gaussian_deblur", data, tmp_path / "out") + ["--batch_size", "2"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_dir(tmp_path / "out", "gaussian_deblur")
    original = pixels(out / "recon" / "00001.png")
    kept = {p: os.stat(p).st_mtime_ns for p in (out / "recon" / "00000.png", out / "recon" / "00002.png",
                                                out / "label" / "00000.png")}
    # simulate an interruption of image 00001: its reconstruction and row are gone
    (out / "recon" / "00001.png").unlink()
    rows = [r for r in read_rows(out / "metrics.csv") if r["image"] != "00001"]
    with open(out / "metrics.csv", "w") as f:
        f.write(",".join(rows[0]) + "\n")
        for r in rows:
            f.write(",".join(r.values()) + "\n")
    (out / "recon" / ".00003.png.abc.tmp").write_bytes(b"half")   # debris of a killed write
    time.sleep(0.05)
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 of 3 images already done" in proc.stderr
    for p, mtime in kept.items():
        assert os.stat(p).st_mtime_ns == mtime, p
    np.testing.assert_array_equal(pixels(out / "recon" / "00001.png"), original)
    check_outputs(out, 3)
    # --overwrite redoes everything, and clears what the old run wrote (no old PNG next to the new summary)
    (out / "notes.txt").write_text("mine")
    proc = run_inproc(args + ["--overwrite", "--num_images", "1"], tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.stat(out / "recon" / "00000.png").st_mtime_ns != kept[out / "recon" / "00000.png"]
    for sub in ("input", "label", "recon", "params"):
        assert sorted(p.name for p in (out / sub).iterdir()) == (["00000.npy"] if sub == "params" else ["00000.png"])
    assert [r["image"] for r in read_rows(out / "metrics.csv")] == ["00000"]
    assert json.loads((out / "summary.json").read_text())["num_images"] == 1
    assert (out / "notes.txt").read_text() == "mine"   # not the run's: kept


def test_resume_refuses_other_configs(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=1)
    args = tiny_args("inpainting", data, tmp_path / "out")
    assert run_inproc(args, tmp_path, monkeypatch, capsys).returncode == 0
    proc = run_inproc(args + ["task.conditioning.params.scale=0.1"], tmp_path, monkeypatch, capsys)
    assert_clean_failure(proc, "different run", "task.conditioning.params.scale", "--overwrite")


def test_interrupted_run_resumes(tmp_path):
    data = tmp_path / "data"
    make_images(data, n=3)
    args = tiny_args("inpainting", data, tmp_path / "out") + ["diffusion.timestep_respacing=ddim25"]
    out = run_dir(tmp_path / "out", "inpainting")
    # A shell without job control starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: restore the default disposition in the child.
    proc = subprocess.Popen([sys.executable, "main.py", "--device", "cpu", *args], cwd=REPO, env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300

    def first_done() -> bool:
        return (out / "metrics.csv").exists() and len(read_rows(out / "metrics.csv")) >= 1

    while not first_done() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "resume" in err and "Traceback" not in err
    assert not list(out.rglob("*.tmp"))
    done = read_rows(out / "metrics.csv")
    assert 1 <= len(done) < 3
    first = os.stat(out / "recon" / "00000.png").st_mtime_ns
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    proc = run_main(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.stat(out / "recon" / "00000.png").st_mtime_ns == first
    assert len(read_rows(out / "metrics.csv")) == 3


def test_unreadable_image_is_skipped_and_counted(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=2)
    (data / "img_00b.png").write_bytes(b"not a png")
    args = tiny_args("inpainting", data, tmp_path / "out") + ["--batch_size", "3"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot read image" in proc.stderr
    out = run_dir(tmp_path / "out", "inpainting")
    rows = {r["image"]: r["status"] for r in read_rows(out / "metrics.csv")}
    assert rows == {"00000": "ok", "00001": "unreadable", "00002": "ok"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["unreadable"] == 1 and summary["unreadable"] == ["00001"]
    assert summary["images"]["00001"] == "img_00b.png"
    assert summary["status"] == "complete" and summary["counts"]["pending"] == 0   # it said pending 1
    assert "1 unreadable" in proc.stdout


def test_no_image_succeeded_exits_1(tmp_path, monkeypatch, capsys):
    """Every image unreadable: the summary line, one error line, exit status 1, consistent counts."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        (data / name).write_bytes(b"not a png")
    proc = run_inproc(tiny_args("inpainting", data, tmp_path / "out"), tmp_path, monkeypatch, capsys)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "2 unreadable" in proc.stdout.strip().splitlines()[-1]
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: no image succeeded (0 diverged, 2 unreadable); see {run_dir(tmp_path / 'out', 'inpainting') / 'summary.json'}"]
    summary = json.loads((run_dir(tmp_path / "out", "inpainting") / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["counts"] == {"ok": 0, "diverged": 0, "unreadable": 2, "pending": 0}


def test_nan_checkpoint_diverges_and_exits_1(tmp_path, monkeypatch, capsys):
    """A checkpoint with NaN weights: every image diverges, exit status 1 (it was 0)."""
    import torch
    from builder import build_model
    from util.config import load_yaml
    cfg = load_yaml(str(REPO / TINY_MODEL))
    model = build_model(cfg, "cpu")
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "nan.pt")
    data = tmp_path / "data"
    make_images(data, n=2)
    args = tiny_args("inpainting", data, tmp_path / "out") + [f"model.model_path={tmp_path / 'nan.pt'}",
                                                              "--batch_size", "2"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 diverged" in proc.stdout and "error: no image succeeded (2 diverged, 0 unreadable)" in proc.stderr
    summary = json.loads((run_dir(tmp_path / "out", "inpainting") / "summary.json").read_text())
    assert summary["counts"] == {"ok": 0, "diverged": 2, "unreadable": 0, "pending": 0}


def test_diverging_sample_is_recorded(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=1)
    args = tiny_args("inpainting", data, tmp_path / "out") + ["task.conditioning.params.scale=1e300"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 1, proc.stderr[-3000:]   # no image succeeded
    out = run_dir(tmp_path / "out", "inpainting")
    (row,) = read_rows(out / "metrics.csv")
    assert row["status"].startswith("diverged at step ") and row["psnr"] == ""
    assert json.loads((out / "summary.json").read_text())["counts"]["diverged"] == 1
    # a diverged image counts as done: a re-run does not redo it
    args = tiny_args("inpainting", data, tmp_path / "out") + ["task.conditioning.params.scale=1e300"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 1 and "1 of 1 images already done" in proc.stderr


def test_npz_data_and_grayscale_model(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "batch.npz", arr_0=rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8))
    args = tiny_args("super_resolution", tmp_path / "batch.npz", tmp_path / "out") + [
        "model.in_channels=1", "--num_images", "2", "--batch_size", "2"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("centre-cropping and resizing") == 1
    out = run_dir(tmp_path / "out", "super_resolution")
    assert pixels(out / "recon" / "00000.png").shape == (32, 32)
    assert len(read_rows(out / "metrics.csv")) == 2


# ---- bad input: one line on stderr, exit status 2, nothing written -----------------------------

BAD_CASES = {
    "missing config": (["--task_config", "configs/nope.yaml"], ["does not exist", "nope.yaml"]),
    "config folder for a file": (["--task_config", "configs"], ["configs", "is a folder; expected a YAML file"]),
    "unknown operator": (["task.measurement.operator.name=nope"], ["nope", "gaussian_blur", "inpainting"]),
    "unknown noise": (["task.measurement.noise.name=nope"], ["nope", "gaussian"]),
    "unknown solver": (["task.conditioning.method=nope"], ["nope", "CoDPS+", "DPS", "_config.yaml"]),
    "unknown sampler": (["diffusion.sampler=nope"], ["nope", "ddpm", "ddim"]),
    "missing checkpoint": (["model.model_path=ckpts/missing.pt"], ["ckpts/missing.pt"]),
    "official checkpoint missing": (["model.model_path=ckpts/nowhere/ffhq_10m.pt"], ["drive.google.com"]),
    "kernel larger than image": (["task.measurement.operator.kernel_size=61"], ["kernel"]),
    "unknown model key": (["model.nope=1", "model.model_path=ckpts/missing.pt"], ["nope", "num_channels"]),
    "unknown solver param": (["task.conditioning.params.nope=1"],
                             ["nope", "scale", "t_div", "(with command-line override task.conditioning.params.nope)"]),
    "unknown operator kwarg": (["task.measurement.operator.nope=1"], ["nope", "kernel_size"]),
    "wrong type": (["task.conditioning.params.scale=abc", "model.model_path=ckpts/missing.pt"],
                   ["scale", "expected a number"]),
    "missing data root": (["task.data.root=/nonexistent/folder"], ["/nonexistent/folder"]),
    "bad batch size": (["--batch_size", "0"], ["--batch_size"]),
    "class-conditional model": (["model.class_cond=true"], ["class_cond", "class labels"]),
    "learned_range without learn_sigma": (["model.learn_sigma=false"], ["learned_range", "learn_sigma"]),
    "float channel count": (["model.num_channels=1.5"], ["num_channels", "positive integer", "1.5"]),
    "string block count": (["model.num_res_blocks=two"], ["num_res_blocks", "two"]),
    "bool as channel count": (["model.num_channels=true"], ["num_channels"]),
    "bad head count": (["model.num_head_channels=0"], ["num_head_channels", "-1"]),
    "zero heads": (["model.num_heads=0"], ["num_heads", "positive integer"]),
    "bad dropout": (["model.dropout=1.5"], ["dropout", "[0, 1)"]),
    "diffusion flag type": (["diffusion.clip_denoised=1"], ["clip_denoised"]),
    "diffusion steps type": (["diffusion.steps=1000.5"], ["steps", "positive integer"]),
}


@pytest.fixture(scope="module")
def bad_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    make_images(tmp / "data", n=1)
    out = run_dir(tmp / "out", "gaussian_deblur")
    out.mkdir(parents=True)
    (out / "metrics.csv").write_text("earlier results\n")
    return tmp


def check_untouched(tmp) -> None:
    out = run_dir(tmp / "out", "gaussian_deblur")
    assert (out / "metrics.csv").read_text() == "earlier results\n"
    assert sorted(str(p.relative_to(tmp / "out")) for p in (tmp / "out").rglob("*")) == \
        ["FFHQ", "FFHQ/DDIM", "FFHQ/DDIM/gaussian_deblur", "FFHQ/DDIM/gaussian_deblur/metrics.csv"]


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input(bad_setup, case, capsys, monkeypatch):
    """In-process (fast): main.main returns 2 and prints one line on stderr."""
    extra, needles = BAD_CASES[case]
    args = tiny_args("gaussian_deblur", bad_setup / "data", bad_setup / "out") + extra
    assert_clean_failure(run_inproc(args, bad_setup, monkeypatch, capsys), *needles)
    check_untouched(bad_setup)


@pytest.mark.parametrize("case", ["missing config", "missing checkpoint", "unknown operator"])
def test_bad_input_subprocess(bad_setup, case):
    """The same as a real process: exit status 2, one line, no traceback."""
    extra, needles = BAD_CASES[case]
    args = tiny_args("gaussian_deblur", bad_setup / "data", bad_setup / "out") + extra
    assert_clean_failure(run_main(args, bad_setup, timeout=300), *needles)
    check_untouched(bad_setup)


def test_checkpoint_of_python_objects_is_refused_in_one_line(bad_setup, capsys, monkeypatch):
    """A pickle of Python objects (not a weights-only state_dict): one line, without PyTorch's
    advice to retry with weights_only=False (unsafe for an untrusted file)."""
    import collections
    import torch
    path = bad_setup / "objects.pt"
    torch.save({"state_dict": collections.Counter(a=1), "cfg": argparse_namespace()}, path)
    args = tiny_args("gaussian_deblur", bad_setup / "data", bad_setup / "out") + [f"model.model_path={path}"]
    line = assert_clean_failure(run_inproc(args, bad_setup, monkeypatch, capsys), "objects.pt", "weights-only")
    assert "weights_only=False" not in line and "weights_only` set to `False" not in line
    assert "trust" not in line and "\x1b" not in line
    check_untouched(bad_setup)


@pytest.mark.parametrize("line, needles", [
    ("use_fp16: 'no'", ["use_fp16", "true, false or auto", "'no'"]),
    ("num_channels: 1.5", ["num_channels", "positive integer", "1.5"]),
    ("class_cond: true", ["class_cond"])])
def test_model_config_file_types_are_checked(bad_setup, capsys, monkeypatch, line, needles):
    """Keys of a model config file (not only overrides) are type-checked before anything is written."""
    key = line.split(":")[0]
    text = "".join(f"{line}\n" if ln.startswith(key + ":") else ln
                   for ln in (REPO / TINY_MODEL).read_text().splitlines(keepends=True))
    cfg = bad_setup / f"model_{key}.yaml"
    cfg.write_text(text)
    args = tiny_args("gaussian_deblur", bad_setup / "data", bad_setup / "out") + ["--model_config", str(cfg)]
    assert_clean_failure(run_inproc(args, bad_setup, monkeypatch, capsys), "model config", *needles)
    check_untouched(bad_setup)


def argparse_namespace():
    import argparse
    return argparse.Namespace(lr=1.0)


def test_random_weights_are_announced(tmp_path, monkeypatch, capsys):
    """model_path "" (e.g. an unset variable in a script) runs, with one loud warning line."""
    data = tmp_path / "data"
    make_images(data, n=1)
    proc = run_inproc(tiny_args("inpainting", data, tmp_path / "out"), tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "RANDOM WEIGHTS" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "model_path" in lines[0], proc.stderr


def test_bad_input_empty_folder_and_mask_ratio(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    args = tiny_args("inpainting", tmp_path / "empty", tmp_path / "out")
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert_clean_failure(proc, "holds no", "empty")
    make_images(tmp_path / "data", n=1)
    args = tiny_args("inpainting", tmp_path / "data", tmp_path / "out") + [
        "task.measurement.operator.mask_prob_range=[0.5, 1.5]"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert_clean_failure(proc, "mask_prob_range", "[0, 1]")
    assert not (tmp_path / "out").exists()


def test_help_lists_flags(tmp_path):
    proc = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("--model_config", "--diffusion_config", "--task_config", "--save_dir", "--seed", "--device",
                 "--gpu", "--batch_size", "--num_images", "--record", "--overwrite", "--metric_norm"):
        assert flag in proc.stdout
    assert TINY_MODEL and TINY_DDIM   # the tiny configs exist
    assert (REPO / TINY_MODEL).is_file() and (REPO / TINY_DDIM).is_file()


# ---- the output folder: lock, filesystem errors, more images asked than there are, SIGTERM ------

def test_second_run_into_a_locked_folder_gets_one_line(tmp_path, monkeypatch, capsys):
    from util.outdir import OutputLock
    data = tmp_path / "data"
    make_images(data, n=1)
    out = run_dir(tmp_path / "out", "inpainting")
    args = tiny_args("inpainting", data, tmp_path / "out")
    with OutputLock(str(out)):   # a first run holds the folder
        line = assert_clean_failure(run_inproc(args, tmp_path, monkeypatch, capsys), "another run",
                                    f"pid {os.getpid()}", str(out))
    assert "--save_dir" in line
    assert not (tmp_path / "out").exists()   # the first run's lock created it and removed it again
    # a lock file left by a killed run holds no lock: it is taken over
    out.mkdir(parents=True)
    (out / ".lock").write_text("pid 999999 on elsewhere, started 2026-01-01 00:00:00")
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / ".lock").exists() and (out / "recon" / "00000.png").is_file()


def test_two_concurrent_runs_into_one_folder(tmp_path):
    """Started together: one finishes, the other stops with one error line (no crash of either)."""
    data = tmp_path / "data"
    make_images(data, n=2)
    args = ["--device", "cpu", *tiny_args("inpainting", data, tmp_path / "out"), "diffusion.timestep_respacing=ddim10"]
    procs = [subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO, env=cli_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(r[0] for r in results)
    assert all("Traceback" not in r[2] for r in results), [r[2][-2000:] for r in results]
    if codes == [0, 2]:   # they overlapped: the second got one line naming the first
        err = next(r[2] for r in results if r[0] == 2)
        assert [ln for ln in err.splitlines() if ln.strip()][-1].startswith("error: another run is writing")
    else:                  # one finished before the other started: the second resumed
        assert codes == [0, 0]
    summary = json.loads((run_dir(tmp_path / "out", "inpainting") / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["counts"]["ok"] == 2


@pytest.mark.parametrize("save_dir", ["/proc/codps_test_x", "/dev/null/x"])
def test_uncreatable_save_dir_is_one_line(tmp_path, monkeypatch, capsys, save_dir):
    data = tmp_path / "data"
    make_images(data, n=1)
    args = tiny_args("inpainting", data, tmp_path / "unused") + ["--save_dir", save_dir]
    assert_clean_failure(run_inproc(args, tmp_path, monkeypatch, capsys), "cannot create the output folder", save_dir)


def test_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing a PNG (simulated): one error line, exit 2, no temporary file, and the
    summary says the run failed (it gave two chained tracebacks)."""
    import errno
    import util.image_io as image_io
    original = image_io.atomic_write_bytes
    written = []

    def full_disk(path, data):
        if path.endswith(".png") and written:
            # the real writer, stopped half-way: its temporary file exists when the error comes
            def fail_after_tmp(fd, *a, **k):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            from unittest import mock
            with mock.patch.object(image_io.os, "fsync", fail_after_tmp):
                return original(path, data)
        written.append(path)
        return original(path, data)

    data = tmp_path / "data"
    make_images(data, n=2)
    args = tiny_args("inpainting", data, tmp_path / "out")
    monkeypatch.setattr(image_io, "atomic_write_bytes", full_disk)
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]   # after the progress bar's \r
    assert len(errors) == 1 and errors[0] == proc.stderr.splitlines()[-1], proc.stderr[-3000:]
    line = errors[0][errors[0].index("error:"):]
    assert line.startswith("error: cannot write the outputs: no space left on device (ENOSPC) at ")
    assert line.endswith(".png")
    out = run_dir(tmp_path / "out", "inpainting")
    assert not list(out.rglob("*.tmp")) and not (out / ".lock").exists()
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_more_images_asked_than_available_warns_once(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    make_images(data, n=2)
    args = tiny_args("inpainting", data, tmp_path / "out") + ["--num_images", "100", "--batch_size", "2"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "--num_images" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0] and "100" in lines[0] and "2 images" in lines[0], lines


def test_sigterm_is_handled_like_ctrl_c(tmp_path, monkeypatch, capsys):
    """SIGTERM during the run: status interrupted, one line, exit 143; the handler is restored."""
    import runner
    data = tmp_path / "data"
    make_images(data, n=3)
    original = runner.Runner._run_batch

    def batch_then_sigterm(self, *a, **k):
        original(self, *a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(runner.Runner, "_run_batch", batch_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    proc = run_inproc(tiny_args("inpainting", data, tmp_path / "out"), tmp_path, monkeypatch, capsys)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "SIGTERM" in ln]
    assert len(lines) == 1 and "resume" in lines[0]
    out = run_dir(tmp_path / "out", "inpainting")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["counts"]["ok"] == 1 and summary["counts"]["pending"] == 2
    assert signal.getsignal(signal.SIGTERM) == before and not (out / ".lock").exists()


def test_respacing_other_than_tuned_warns_once(tmp_path, monkeypatch, capsys):
    """An MNIST config tuned at ddim100 run at 3 steps: one warning line naming both counts;
    at the tuned respacing, none."""
    data = tmp_path / "data"
    make_images(data, n=1)
    args = ["--model_config", TINY_MODEL, "--diffusion_config", TINY_DDIM, "--task_config",
            "configs/MNIST/DDIM/motion_deblur_config.yaml", "--save_dir", str(tmp_path / "out"),
            f"task.data.root={data}", "--num_images", "1"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "tuned for" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0], proc.stderr[-3000:]
    assert "ddim100 (100 steps)" in lines[0] and "takes 3 steps (ddim3)" in lines[0] and "scale: auto" in lines[0]
    from builder import warn_untuned_respacing
    assert not warn_untuned_respacing({"tuned_respacing": "ddim3"}, {"timestep_respacing": "ddim3"}, 3)
    assert not warn_untuned_respacing({}, {"timestep_respacing": "ddim3"}, 3)


def test_summary_records_the_resolved_configuration(tmp_path, monkeypatch, capsys):
    """Defaults the config files leave out (eta, t_div, div_ratio, inv_var, use_A_AT, every model
    key, the operator's and noise's arguments) are in summary.json["resolved"] with the values used."""
    import yaml
    from builder import diffusion_config_keys, model_config_keys
    data = tmp_path / "data"
    make_images(data, n=1)
    diffusion = yaml.safe_load((REPO / TINY_DDIM).read_text())
    del diffusion["eta"]
    (tmp_path / "diffusion.yaml").write_text(yaml.safe_dump(diffusion))
    task = {"conditioning": {"method": "CoDPS+", "params": {"scale": 0.2}},
            "data": {"name": "folder", "root": str(data)},
            "measurement": {"operator": {"name": "gaussian_blur", "kernel_size": 9, "intensity": 3.0},
                            "noise": {"name": "gaussian", "sigma": 0.05}}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    args = ["--model_config", TINY_MODEL, "--diffusion_config", str(tmp_path / "diffusion.yaml"),
            "--task_config", str(tmp_path / "task.yaml"), "--save_dir", str(tmp_path / "out")]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "task" / "summary.json").read_text())
    assert "eta" not in summary["configs"]["diffusion"]          # as written
    res = summary["resolved"]                                       # as used
    assert res["diffusion"]["eta"] == 1.0 and res["diffusion"]["num_steps"] == 3
    assert set(diffusion_config_keys()) <= set(res["diffusion"])
    assert res["solver"] == {"method": "CoDPS+", "params": {"scale": 0.2, "t_div": 0.0, "div_ratio": 1.0,
                                                             "inv_var": res["solver"]["params"]["inv_var"],
                                                             "use_A_AT": res["solver"]["params"]["use_A_AT"]}}
    from solvers.codps import CoDPSPlus
    spec = CoDPSPlus.params
    assert res["solver"]["params"]["inv_var"] == spec["inv_var"].default
    assert res["solver"]["params"]["use_A_AT"] == spec["use_A_AT"].default
    assert set(model_config_keys()) <= set(res["model"]) and res["model"]["num_channels"] == 32
    assert res["operator"]["name"] == "gaussian_blur" and res["operator"]["kernel_size"] == 9
    assert res["noise"] == {"name": "gaussian", "sigma": 0.05}
    assert res["data"]["image_size"] == 32 and res["data"]["channels"] == 3


def test_atomic_writes_get_the_umask_mode(tmp_path):
    """Outputs are written via mkstemp + rename; they get 0666 less the umask like a plain open()
    (mkstemp alone leaves 0600: other users of a shared machine could not read the results)."""
    import os
    import stat
    from util.image_io import atomic_write_bytes
    old = os.umask(0o022)
    try:
        atomic_write_bytes(str(tmp_path / "a.csv"), b"x\n")
        os.umask(0o077)
        atomic_write_bytes(str(tmp_path / "b.csv"), b"y\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.csv").stat().st_mode) == 0o600
    assert (tmp_path / "a.csv").read_bytes() == b"x\n" and not list(tmp_path.glob(".*.tmp"))
