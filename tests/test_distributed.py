"""Several processes: ``torchrun --nproc_per_node=2 main.py`` (gloo, CPU) gives the same images and
metrics rows as one process, resumes, and stops every process with status 2 on bad input; the
synchronisation helpers of util.distributed agree on errors and notice a dead process."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cli_helpers import REPO, cli_env, make_images, read_rows, run_inproc, run_main, tiny_args
from util.distributed import SINGLE, env_ranks, shard

OUT = "FFHQ/DDIM/motion_deblur"
COMPARED = ("image", "psnr", "ssim", "lpips", "residual", "nfe", "status")   # all but the timing column


def torchrun(args: list[str], tmp, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    env = cli_env(tmp)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                           "--master_port", str(free_port()), "main.py", "--device", "cpu", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_and_env_ranks():
    assert shard(range(7), 0, 3) == [0, 3, 6] and shard(range(7), 2, 3) == [2, 5]
    assert sorted(shard(range(7), 0, 2) + shard(range(7), 1, 2)) == list(range(7))
    assert env_ranks({}) == (0, 1, 0)
    assert env_ranks({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(ValueError, match="inconsistent"):
        env_ranks({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="integers"):
        env_ranks({"WORLD_SIZE": "two"})
    assert not SINGLE.enabled and SINGLE.is_main and SINGLE.agree(None) == [] and SINGLE.agree("x") == [(0, "x")]


def test_torchrun_matches_one_process_and_resumes(tmp_path):
    data = tmp_path / "data"
    make_images(data, n=3)
    one = run_main(tiny_args("motion_deblur", data, tmp_path / "one"), tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    out1, out2 = tmp_path / "one" / OUT, tmp_path / "two" / OUT
    # an earlier run into "two" finished image 00000 only: torchrun must skip it and do the rest
    shutil.copytree(out1, out2)
    for sub in ("input", "label", "recon", "params", "measurement"):
        for f in (out2 / sub).iterdir():
            if not f.name.startswith("00000"):
                f.unlink()
    rows = read_rows(out1 / "metrics.csv")
    (out2 / "metrics.csv").write_text(",".join(rows[0]) + "\n" + ",".join(rows[0].values()) + "\n")
    kept = os.stat(out2 / "recon" / "00000.png").st_mtime_ns
    time.sleep(0.05)
    proc = torchrun(tiny_args("motion_deblur", data, tmp_path / "two"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 1/2" in proc.stderr and "1 of 2 images already done" in proc.stderr
    assert proc.stdout.count("mean PSNR") == 1          # only rank 0 prints the final line
    assert os.stat(out2 / "recon" / "00000.png").st_mtime_ns == kept
    for name in ("00000", "00001", "00002"):
        for sub in ("recon", "input", "label"):
            assert (out1 / sub / f"{name}.png").read_bytes() == (out2 / sub / f"{name}.png").read_bytes(), (sub, name)
        np.testing.assert_array_equal(np.load(out1 / "params" / f"{name}.npy"),
                                      np.load(out2 / "params" / f"{name}.npy"))
    rows1, rows2 = read_rows(out1 / "metrics.csv"), read_rows(out2 / "metrics.csv")
    assert [{k: r[k] for k in COMPARED} for r in rows1] == [{k: r[k] for k in COMPARED} for r in rows2]
    assert not list(out2.glob("metrics.rank*.csv")) and not list(out2.rglob("*.tmp"))
    s1, s2 = (json.loads((o / "summary.json").read_text()) for o in (out1, out2))
    assert s2["status"] == "complete" and s2["processes"] == 2 and s2["counts"]["ok"] == 3
    assert s2["metrics"]["psnr"] == s1["metrics"]["psnr"] and s2["configs"] == s1["configs"]


def test_torchrun_bad_input_stops_every_process(tmp_path):
    data = tmp_path / "data"
    make_images(data, n=1)
    start = time.time()
    proc = torchrun(tiny_args("motion_deblur", data, tmp_path / "out") + ["task.conditioning.params.nope=1"],
                    tmp_path, timeout=90)
    assert time.time() - start < 60
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nope" in errors[0], proc.stderr[-3000:]
    # the processes exit with status 2 (torchrun may stop the slower one once the first has
    # failed, so it reports one or two of them); torchrun itself exits 1 and nothing hangs
    assert proc.returncode != 0
    assert proc.stderr.count("exitcode  : 2") >= 1, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_interrupted_multiprocess_rows_are_merged_on_resume(tmp_path, monkeypatch, capsys):
    """Rows left in metrics.rank<r>.csv by an interrupted torchrun run count as done."""
    data = tmp_path / "data"
    make_images(data, n=2)
    args = tiny_args("inpainting", data, tmp_path / "out")
    assert run_inproc(args, tmp_path, monkeypatch, capsys).returncode == 0
    out = tmp_path / "out" / "FFHQ" / "DDIM" / "inpainting"
    rows = read_rows(out / "metrics.csv")
    header = ",".join(rows[0]) + "\n"
    (out / "metrics.csv").write_text(header + ",".join(rows[0].values()) + "\n")
    (out / "metrics.rank1.csv").write_text(header + ",".join(rows[1].values()) + "\n")
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 of 2 images already done" in proc.stderr
    assert read_rows(out / "metrics.csv") == rows and not (out / "metrics.rank1.csv").exists()


WORKER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {repo!r})
    from util import distributed
    ctx = distributed.init(False, timeout_s=30)
    failed = ctx.agree("boom" if ctx.rank == 1 else None)
    if ctx.rank == 1:
        print(json.dumps({{"rank": 1, "failed": failed}}), flush=True)
        os._exit(3)                          # dies without reaching the final barrier
    start = time.time()
    try:
        ctx.wait_for_all()
        outcome = "returned"
    except distributed.DistributedError as exc:
        outcome = "DistributedError"
    print(json.dumps({{"rank": 0, "failed": failed, "outcome": outcome, "waited": time.time() - start}}), flush=True)
""")


def test_agree_and_dead_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO)))
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = dict(cli_env(tmp_path), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(rank),
                   LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=90) for p in procs]
    res = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert res[0]["failed"] == [[1, "boom"]] or res[0]["failed"] == [(1, "boom")]
    assert res[1]["failed"] == res[0]["failed"]
    assert res[0]["outcome"] == "DistributedError" and res[0]["waited"] < 60, (res, outs[0][1][-2000:])
    assert procs[1].returncode == 3 and procs[0].returncode == 0
