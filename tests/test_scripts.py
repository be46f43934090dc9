"""run_commands.sh and batch_command.sh: variables from the environment, extra arguments passed
through to main.py, exit statuses, and the sweep's pass / fail table."""
from __future__ import annotations

import subprocess
import sys

from cli_helpers import REPO, TINY_DDIM, TINY_MODEL, cli_env, make_images


def run_script(script: str, tmp, env_extra: dict, *args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = cli_env(tmp)
    env.update({"PYTHON": sys.executable, **env_extra})
    return subprocess.run(["bash", str(REPO / script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


TINY_ARGS = ["--model_config", TINY_MODEL, "--diffusion_config", TINY_DDIM, "--device", "cpu", "--num_images", "1",
             "task.measurement.operator.kernel_size=9"]


def test_run_commands(tmp_path):
    make_images(tmp_path / "data", n=1)
    proc = run_script("run_commands.sh", tmp_path,
                      dict(dataset="FFHQ", sampling_type="DDIM", task_config="gaussian_deblur_config"),
                      *TINY_ARGS, "--save_dir", str(tmp_path / "out"), f"task.data.root={tmp_path / 'data'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("Running dataset=FFHQ sampling_type=DDIM task_config=gaussian_deblur_config")
    assert "configs/FFHQ/DDIM/gaussian_deblur_config.yaml" in first
    assert (tmp_path / "out" / "FFHQ" / "DDIM" / "gaussian_deblur" / "recon" / "00000.png").is_file()


def test_run_commands_passes_exit_status(tmp_path):
    proc = run_script("run_commands.sh", tmp_path, dict(dataset="NOPE"))
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[0].startswith("Running dataset=NOPE")
    assert "configs/NOPE/DDIM/model_config.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_batch_command_table_and_status(tmp_path):
    make_images(tmp_path / "data", n=1)
    env = dict(datasets="FFHQ", sampling_types="DDIM", tasks="gaussian_deblur_config nope_config",
               save_base_dir=str(tmp_path / "results"))
    proc = run_script("batch_command.sh", tmp_path, env, *TINY_ARGS, f"task.data.root={tmp_path / 'data'}")
    assert proc.returncode != 0
    out = proc.stdout
    assert "FFHQ       DDIM   gaussian_deblur_config     passed" in out
    assert "FFHQ       DDIM   nope_config                FAILED (exit 2)" in out
    assert out.strip().splitlines()[-1] == "2 runs, 1 passed, 1 failed"
    assert (tmp_path / "results" / "FFHQ" / "DDIM" / "gaussian_deblur" / "metrics.csv").is_file()


def test_relative_paths_resolve_against_the_callers_folder(tmp_path):
    """bash x/run_commands.sh task.data.root=imgs --save_dir out, run from elsewhere: imgs and out
    are the caller's (they resolved against the repository and failed)."""
    make_images(tmp_path / "imgs", n=1)
    tiny = [a if not a.startswith("tests/") else str(REPO / a) for a in TINY_ARGS]
    proc = run_script("run_commands.sh", tmp_path, dict(dataset="FFHQ", sampling_type="DDIM",
                                                         task_config="gaussian_deblur_config"),
                      *tiny, "--save_dir", "out", "task.data.root=imgs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "FFHQ" / "DDIM" / "gaussian_deblur" / "recon" / "00000.png").is_file()
    # the environment's save_dir too, and the same in batch_command.sh (PYTHON=echo: the command only)
    proc = run_script("batch_command.sh", tmp_path, dict(datasets="FFHQ", sampling_types="DDIM",
                                                         tasks="gaussian_deblur_config", save_base_dir="sweep",
                                                         PYTHON="echo"),
                      "--save_dir=elsewhere", "task.data.root=imgs", "model.model_path=", "--seed", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("main.py ")]
    args = line.split()
    assert args[args.index("--save_dir") + 1] == f"{tmp_path}/sweep"
    assert f"--save_dir={tmp_path}/elsewhere" in args and f"task.data.root={tmp_path}/imgs" in args
    assert "model.model_path=" in args and args[args.index("--model_config") + 1].startswith("configs/FFHQ/")
