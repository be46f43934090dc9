"""The whole-process benchmark (benchmarks/e2e.py) and the GPU check's dry run
(benchmarks/gpu_check.sh --dry-run, which CI runs here on the CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli_helpers import REPO, cli_env
from benchmarks import e2e
from util.config import load_yaml


def test_registered_methods_follow_the_registry(monkeypatch):
    from solvers.base import _REGISTRY, Solver, register_solver
    classes = {cls for cls in _REGISTRY.values()}
    names = e2e.registered_methods()
    assert len(names) == len(classes) and {"CoDPS+", "DPS"} <= set(names)
    assert all(_REGISTRY[n] in classes for n in names)
    # a solver registered later is picked up with its first name
    monkeypatch.setattr("solvers.base._REGISTRY", dict(_REGISTRY))

    @register_solver("ZzNew", "zz_new_alias")
    class ZzNew(Solver):   # noqa: D401 - a stub
        pass

    assert e2e.registered_methods()[-1] == "ZzNew" and "zz_new_alias" not in e2e.registered_methods()


def test_method_params_from_shipped_configs():
    params, src = e2e.method_params("CoDPS+", "MNIST", "super_resolution")
    assert src == "configs/MNIST/methods/codps_plus.yaml [super_resolution_x2]"   # the method table's entry
    table = load_yaml(os.path.join(REPO, "configs/MNIST/methods/codps_plus.yaml"))
    shipped = {**table["defaults"], **table["tasks"]["super_resolution_x2"]["params"]}   # the tuner rewrites it
    assert params["scale"] == shipped["scale"] and params["t_div"] == shipped["t_div"]
    params, src = e2e.method_params("ps", "FFHQ", "super_resolution")   # DPS's alias finds its config
    assert src == "configs/FFHQ/DDPM/dps_super_resolution_config.yaml" and params == {"scale": 0.3}
    assert e2e.method_params("none", "MNIST", "super_resolution") == ({}, "defaults")


def test_extrapolation_to_100_steps():
    rows = [{"status": "ok", "steps": 2, "wall_s": 30.0}, {"status": "ok", "steps": 4, "wall_s": 34.0}]
    wall, step, fixed = e2e._at_100(rows)
    assert (step, fixed, wall) == (2.0, 26.0, 226.0)
    assert e2e._at_100([{"status": "ok", "steps": 100, "wall_s": 9.0}]) == (9.0, None, None)
    assert e2e._at_100([{"status": "error", "steps": 2, "wall_s": 1.0}]) == (None, None, None)
    # a longer run that took less time (load changed, cache warmed): no estimate
    assert e2e._at_100([{"status": "ok", "steps": 2, "wall_s": 90.0}, {"status": "ok", "steps": 4, "wall_s": 50.0}]) \
        == (None, -20.0, None)


def test_quick_run_writes_outside_results(tmp_path):
    before = sorted(os.listdir(REPO / "benchmarks" / "results"))
    out = tmp_path / "out"
    env = cli_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--e2e", "--quick", "--methods", "CoDPS+,none",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "speed_e2e_cpu_quick.json").read_text())
    rows = data["rows"]
    assert [(r["method"], r["size"], r["steps"], r["images"], r["status"]) for r in rows] == \
        [("CoDPS+", 32, 2, 1, "ok"), ("none", 32, 2, 1, "ok")]
    for r in rows:
        assert r["precision"] in ("fp32", "bf16") and r["scaled"]
        assert r["sampling_s"] > 0 and abs(r["rest_s"] + r["sampling_s"] - r["wall_s"]) < 1e-9
        assert r["s_per_image_100"] == pytest.approx(r["sampling_s"] * 50)
        assert r["images_per_hour_100"] == pytest.approx(3600 / (r["rest_s"] + r["s_per_image_100"]))
    assert "| 32 | CoDPS+ | auto |" in (out / "speed_e2e_cpu_quick.md").read_text()
    assert sorted(os.listdir(REPO / "benchmarks" / "results")) == before


def test_gpu_check_dry_run(tmp_path):
    """The whole GPU check on the CPU with tiny sizes: every step runs and writes its files into
    the given folder, none into benchmarks/results."""
    before = sorted(os.listdir(REPO / "benchmarks" / "results"))
    out = tmp_path / "check"
    env = dict(cli_env(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_check: all steps ok" in proc.stdout and "FAILED" not in proc.stdout
    for name in ("speed_cpu_quick", "speed_cpu_throughput", "speed_e2e_cpu_quick"):
        assert json.loads((out / f"{name}.json").read_text()) and (out / f"{name}.md").is_file()
    tp = json.loads((out / "speed_cpu_throughput.json").read_text())["rows"]
    assert [r["role"] for r in tp][0] == "batch 1" and tp[-1]["role"] == "largest batch"
    assert all(r["status"] == "ok" for r in tp) and tp[-1]["images"] == 4
    assert sorted(os.listdir(REPO / "benchmarks" / "results")) == before
    bad = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--frobnicate"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "error: unknown argument --frobnicate" in bad.stderr
