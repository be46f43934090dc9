"""Helpers of the command-line tests: run ``main.py`` in a subprocess with a tiny random-weight
UNet (tests/configs) and write small test images."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
TINY_MODEL = "tests/configs/tiny_model_config.yaml"
TINY_DDIM = "tests/configs/tiny_ddim_config.yaml"
TINY_DDPM = "tests/configs/tiny_ddpm_config.yaml"

#: Overrides that fit the paper's 256-pixel task configs to the tiny 32-pixel model.
TASK_OVERRIDES = {
    "gaussian_deblur": ["task.measurement.operator.kernel_size=9"],
    "motion_deblur": ["task.measurement.operator.kernel_size=9"],
    "super_resolution": ["task.measurement.operator.in_shape=[1, 3, 32, 32]"],
    "inpainting": [],
}


def run_dir(save_dir: Path, task: str, sampler: str = "DDIM", dps: bool = False) -> Path:
    """The output folder of :func:`tiny_args` ``(task, ..., save_dir, sampler, dps)``: main.py names
    it after the task config, ``<save_dir>/FFHQ/<sampler>/[dps_]<task>``."""
    return Path(save_dir) / "FFHQ" / sampler / (f"dps_{task}" if dps else task)


def cli_env(tmp: Path) -> dict:
    """Environment of a test run: one thread, and a private torch hub folder (no LPIPS weights)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCH_HOME=str(tmp / "torch_home"),
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def run_main(args: list[str], tmp: Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """``python main.py *args`` from the repository root, on the CPU; returns the finished process."""
    return subprocess.run([sys.executable, "main.py", "--device", "cpu", *args], cwd=REPO, env=cli_env(tmp),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def run_inproc(args: list[str], tmp: Path, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """``main.main(["--device", "cpu", *args])`` in this process (no torch import per run), from the
    repository root with a private torch hub; returns a CompletedProcess with the captured output."""
    import main
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("TORCH_HOME", str(tmp / "torch_home"))
    capsys.readouterr()
    status = main.main(["--device", "cpu", *args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


def tiny_args(task: str, data_root: Path, save_dir: Path, sampler: str = "DDIM", dps: bool = False) -> list[str]:
    """Arguments running the shipped FFHQ ``task`` config with the tiny model on ``data_root``."""
    name = f"dps_{task}_config.yaml" if dps else f"{task}_config.yaml"
    return ["--model_config", TINY_MODEL, "--diffusion_config", TINY_DDIM if sampler == "DDIM" else TINY_DDPM,
            "--task_config", f"configs/FFHQ/{sampler}/{name}", "--save_dir", str(save_dir),
            f"task.data.root={data_root}", *TASK_OVERRIDES[task]]


def make_images(folder: Path, n: int = 2, size: int = 32, seed: int = 0, ext: str = "png") -> list[Path]:
    """Write ``n`` smooth random RGB images of ``size`` x ``size`` into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"img_{i:02d}.{ext}"
        img.save(path)
        paths.append(path)
    return paths


def read_rows(path: Path) -> list[dict]:
    """Rows of a metrics.csv."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, exactly one line on stderr starting with 'error:', no traceback; the line
    contains every needle (case-insensitive). Returns the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]
