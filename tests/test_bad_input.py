"""Bad input by kind (issue 25): every file the tool reads that is corrupt, truncated or of the
wrong kind, YAML that means something other than it says, transparency, out-of-range and
degenerate values, paths (a folder for a file and the reverse, empty values, operator files),
full disks and seeds. Each kind gives one ``error:`` line (exit 2, nothing written) or one warning."""
from __future__ import annotations

import errno
import logging
import os
import subprocess
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import REPO, assert_clean_failure, make_images, run_dir, run_inproc, tiny_args
from util.files import FileError, MissingFileError, load_checkpoint, load_npy, load_npz

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def data(tmp_path):
    make_images(tmp_path / "data", n=1)
    return tmp_path / "data"


def nothing_written(tmp_path) -> bool:
    return not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def fails(tmp_path, monkeypatch, capsys, task, data, extra, *needles, args=None) -> str:
    args = args if args is not None else tiny_args(task, data, tmp_path / "out")
    line = assert_clean_failure(run_inproc(args + extra, tmp_path, monkeypatch, capsys), *needles)
    assert nothing_written(tmp_path), sorted(str(p) for p in (tmp_path / "out").rglob("*"))
    return line


# ---- corrupt, truncated, wrong-kind files ------------------------------------------------------------

def test_text_file_named_npy_gets_no_pickle_advice(tmp_path, monkeypatch, capsys, data):
    (tmp_path / "k.npy").write_text("0.1 0.2 0.3\n")
    line = fails(tmp_path, monkeypatch, capsys, "motion_deblur", data,
                 [f"task.measurement.operator.kernel={tmp_path / 'k.npy'}"], "k.npy", "not a NumPy .npy file")
    assert "pickle" not in line.lower()


def test_truncated_npy_and_object_npy(tmp_path):
    np.save(tmp_path / "g.npy", np.arange(100.0))
    (tmp_path / "t.npy").write_bytes((tmp_path / "g.npy").read_bytes()[:200])
    with pytest.raises(FileError, match=r"kernel .*t\.npy is not a readable \.npy array: truncated or damaged"):
        load_npy(str(tmp_path / "t.npy"), "kernel")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FileError, match="Python objects") as exc:
        load_npy(str(tmp_path / "o.npy"), "kernel")
    assert "allow_pickle" not in str(exc.value)
    with pytest.raises(FileError, match="is a folder; expected a .npy file"):
        load_npy(str(tmp_path), "kernel")
    with pytest.raises(MissingFileError, match="does not exist"):
        load_npy(str(tmp_path / "none.npy"), "kernel")


def test_damaged_npz_is_one_line(tmp_path, monkeypatch, capsys):
    np.savez(tmp_path / "d.npz", arr_0=np.zeros((2, 32, 32, 3), np.uint8))
    good = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(good[: len(good) // 2])           # truncated: no central directory
    line = fails(tmp_path, monkeypatch, capsys, "gaussian_deblur", tmp_path / "d.npz",
                 ["task.measurement.operator.kernel_size=9"], "d.npz", "not a readable .npz archive")
    assert "BadZipFile" not in line
    (tmp_path / "e.npz").write_text("not a zip at all")
    with pytest.raises(FileError, match="not a readable .npz archive"):
        load_npz(str(tmp_path / "e.npz"), "data root", "arr_0")
    np.savez(tmp_path / "k.npz", other=np.zeros(2))
    with pytest.raises(FileError, match=r"has no array 'arr_0' \(has: other\)"):
        load_npz(str(tmp_path / "k.npz"), "data root", "arr_0")


@pytest.mark.parametrize("kind", ["truncated", "text", "folder", "npy"])
def test_bad_checkpoint_files(tmp_path, monkeypatch, capsys, data, kind):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    path = tmp_path / "bad.pt"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:100])
        needles = ["bad.pt", "truncated or damaged"]
    elif kind == "text":
        path.write_text("model weights go here\n")
        needles = ["bad.pt", "not a PyTorch checkpoint"]
    elif kind == "folder":
        path.mkdir()
        needles = ["bad.pt", "is a folder", "checkpoint file"]
    else:
        np.save(tmp_path / "bad.npy", np.zeros(3))
        path = tmp_path / "bad.npy"
        needles = ["bad.npy", "model_path"]
    line = fails(tmp_path, monkeypatch, capsys, "gaussian_deblur", data,
                 ["task.measurement.operator.kernel_size=9", f"model.model_path={path}"], *needles)
    assert "weights_only=False" not in line and "does not exist" not in line


def test_load_checkpoint_and_the_digit_classifier(tmp_path):
    torch.save({"ema": {"w": torch.ones(2)}}, tmp_path / "a.pt")
    assert load_checkpoint(str(tmp_path / "a.pt"))["w"].tolist() == [1.0, 1.0]
    torch.save([1, 2], tmp_path / "l.pt")
    with pytest.raises(FileError, match="does not hold a state_dict"):
        load_checkpoint(str(tmp_path / "l.pt"))
    from util.digit_classifier import DEFAULT_PATH, load_classifier
    (tmp_path / "c.pt").write_bytes(open(DEFAULT_PATH, "rb").read()[:1000])
    with pytest.raises(FileError, match=r"digit classifier .*c\.pt is not a loadable .*truncated"):
        load_classifier(str(tmp_path / "c.pt"))


def test_corrupt_measurement_image(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "dir" / "measurement"
    folder.mkdir(parents=True)
    (folder / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    fails(tmp_path, monkeypatch, capsys, "inpainting", None, ["--measurement_dir", str(tmp_path / "dir")],
          "x.png", "not a readable image", args=tiny_args("inpainting", tmp_path / "nowhere", tmp_path / "out"))


# ---- YAML ---------------------------------------------------------------------------------------------

def test_yaml_with_a_repeated_key_is_refused(tmp_path, monkeypatch, capsys, data):
    text = (REPO / "configs/FFHQ/DDIM/gaussian_deblur_config.yaml").read_text()
    assert "conditioning:\n" in text
    task = tmp_path / "task_config.yaml"
    task.write_text(text.replace("conditioning:\n", "conditioning:\n  method: PiGDM\n", 1))
    args = tiny_args("gaussian_deblur", data, tmp_path / "out")
    args[args.index("--task_config") + 1] = str(task)
    fails(tmp_path, monkeypatch, capsys, "", data, ["task.measurement.operator.kernel_size=9"], "task_config.yaml",
          "repeated key 'method'", "line", args=args)


# ---- transparency -------------------------------------------------------------------------------------

def test_rgba_images_are_named_in_one_warning(tmp_path, caplog):
    from data.dataloader import FolderDataset
    folder = tmp_path / "rgba"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 4), 100 + i, np.uint8), "RGBA").save(folder / f"{i}.png")
    ds = FolderDataset(str(folder), 8, 3)
    with caplog.at_level(logging.WARNING):
        x = [ds.load(i) for i in range(2)]
    warnings = [r.message for r in caplog.records if "transparency" in r.getMessage()]
    assert len(caplog.records) == 1 and "0.png" in caplog.records[0].getMessage() and "alpha" in \
        caplog.records[0].getMessage(), [r.getMessage() for r in caplog.records]
    assert warnings and float(x[0][0, 0, 0]) == pytest.approx(100 / 127.5 - 1)


# ---- out-of-range and degenerate values ---------------------------------------------------------------

def test_npy_measurement_on_the_8bit_scale_is_refused(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "dir" / "measurement"
    folder.mkdir(parents=True)
    np.save(folder / "x.npy", np.full((3, 32, 32), 200.0, np.float32))
    fails(tmp_path, monkeypatch, capsys, "inpainting", None, ["--measurement_dir", str(tmp_path / "dir")],
          "x.npy", "[-1, 1]", "v / 127.5 - 1", args=tiny_args("inpainting", tmp_path / "nowhere", tmp_path / "out"))


def test_mask_observing_nothing_is_refused_and_the_residual_is_not_zero(tmp_path, monkeypatch, capsys, data):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "m.png")
    fails(tmp_path, monkeypatch, capsys, "inpainting", data, [f"task.measurement.operator.mask={tmp_path / 'm.png'}"],
          "m.png", "observes no pixel")
    from util.metrics import data_fit_residual
    y = torch.zeros(2, 1, 2, 2)
    observed = torch.tensor([True, False]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert data_fit_residual(y + 1, y, 0.5, observed) == [2.0, None]


# ---- paths --------------------------------------------------------------------------------------------

def test_folder_for_a_file_and_file_for_a_folder_are_named(tmp_path, monkeypatch, capsys, data):
    (tmp_path / "cfgdir").mkdir()
    args = tiny_args("gaussian_deblur", data, tmp_path / "out") + ["task.measurement.operator.kernel_size=9"]
    a = list(args)
    a[a.index("--task_config") + 1] = str(tmp_path / "cfgdir")
    fails(tmp_path, monkeypatch, capsys, "", data, [], "cfgdir", "is a folder", "YAML file", args=a)
    fails(tmp_path, monkeypatch, capsys, "motion_deblur", data,
          [f"task.measurement.operator.kernel={tmp_path / 'cfgdir'}"], "cfgdir", "is a folder")
    png = make_images(tmp_path / "one", n=1)[0]
    fails(tmp_path, monkeypatch, capsys, "gaussian_deblur", png, ["task.measurement.operator.kernel_size=9"],
          "img_00.png", "is a file", "folder")
    fails(tmp_path, monkeypatch, capsys, "inpainting", data, ["--measurement_dir", str(png)], "is a file")


def _resolve(tmp_path, *args: str) -> list[str]:
    script = f'caller_dir={tmp_path}; . "{REPO}/util/user_paths.sh"; resolve_user_args "$@"; printf "%s\\n" "${{user_args[@]}}"'
    out = subprocess.run(["bash", "-c", script, "x", *args], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_user_paths_resolve_alike_and_empty_values_stay_empty(tmp_path):
    got = _resolve(tmp_path, 'model.model_path=""', "model.model_path=''", "task.data.root=d",
                   "task.measurement.operator.kernel=k.npy", "task.measurement.operator.mask=m.png",
                   "task.measurement.operator.kernel_size=9", "--save_dir", "s")
    assert got == ['model.model_path=""', "model.model_path=''", f"task.data.root={tmp_path}/d",
                   f"task.measurement.operator.kernel={tmp_path}/k.npy", f"task.measurement.operator.mask={tmp_path}/m.png",
                   "task.measurement.operator.kernel_size=9", "--save_dir", f"{tmp_path}/s"]


def test_full_disk_names_the_file(tmp_path):
    from util import image_io

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")     # as write / fsync raise it: no file name
    target = tmp_path / "out" / "x.png"
    with mock.patch.object(image_io.os, "fsync", no_space), pytest.raises(OSError) as exc:
        image_io.atomic_write_bytes(str(target), b"data")
    from util.outdir import describe_os_error
    assert exc.value.filename == str(target) and exc.value.errno == errno.ENOSPC
    assert describe_os_error(exc.value).endswith(f"(ENOSPC) at {target}")
    assert os.listdir(tmp_path / "out") == []


# ---- flags --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", ["-5", "12345678901234567890"])
def test_bad_seed_names_the_flag_and_range(tmp_path, monkeypatch, capsys, data, seed):
    fails(tmp_path, monkeypatch, capsys, "gaussian_deblur", data, ["--seed", seed], "--seed", seed,
          "[0, 9223372036854775807]")


def test_save_dir_that_is_a_file_is_named(tmp_path, monkeypatch, capsys, data):
    (tmp_path / "afile").write_text("x")
    args = tiny_args("gaussian_deblur", data, tmp_path / "afile") + ["task.measurement.operator.kernel_size=9"]
    line = assert_clean_failure(run_inproc(args, tmp_path, monkeypatch, capsys), f"{tmp_path / 'afile'} is a file",
                                "not a folder")
    assert "does not exist" not in line and (tmp_path / "afile").read_text() == "x"


def test_negative_kernel_entries_warn_once(tmp_path, caplog):
    from util.measurement_io import read_kernel
    k = np.array([[0.0, -0.5, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    np.save(tmp_path / "k.npy", k)
    with caplog.at_level(logging.WARNING):
        out = read_kernel(str(tmp_path / "k.npy"))
    assert out.sum() == pytest.approx(1.0) and out[0, 1] == pytest.approx(-0.2)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "k.npy" in lines[0] and "negative" in lines[0]
