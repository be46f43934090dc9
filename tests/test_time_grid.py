"""The per-method time grid (``conditioning.time_grid``, the low-noise family
``sigma<N>max<S>`` of guided_diffusion/respace.py): exact timesteps, exact NFE at every budget,
no change for configs without the key, the tuned table keyed by the grid, and a main.py run."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml

from cli_helpers import TINY_DDIM, TINY_MODEL, make_images, run_inproc
from guided_diffusion.respace import (get_named_beta_schedule, grid_respacing, respacing_steps, sigma_timesteps,
                                      space_timesteps)
from util.config import ConfigError, apply_tuned, check_task_layout, load_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LINEAR = get_named_beta_schedule("linear", 1000)


def test_sigma_grid_exact_small_cases():
    # β = 0.1 for 10 steps: σ_t = √((1 − 0.9^(t+1)) / 0.9^(t+1)) = 0.333, 0.484, 0.610, 0.724, 0.833, 0.939, 1.044 ...
    b = np.full(10, 0.1)
    assert sigma_timesteps(b, 6, 1.5) == [0, 1, 3, 6, 8, 9]       # levels 0.25, 0.5, ..., 1.5: nearest σ_t
    # levels 0.1 .. 1.0: 0.1-0.4 all nearest t = 0, 0.5 -> 1 ...; collisions move up to the next free t
    assert sigma_timesteps(b, 10, 1.0) == list(range(10))
    with pytest.raises(ValueError, match="do not fit"):
        sigma_timesteps(b, 11, 1.0)
    with pytest.raises(ValueError):
        sigma_timesteps(b, 0, 1.0)
    # the 1000-step linear schedule (σ_t = 2 at t ≈ 396): what the MNIST configs use
    assert sigma_timesteps(LINEAR, 4, 2.0) == [144, 258, 338, 396]
    ab = np.cumprod(1 - LINEAR)
    sig = np.sqrt((1 - ab) / ab)
    grid = space_timesteps(1000, "sigma100max2", LINEAR)
    assert len(grid) == len(set(grid)) == 100 and grid == sorted(grid) and grid[-1] == 396
    for k, t in enumerate(grid, start=1):     # no collision here: each is the nearest level
        assert abs(sig[t] - 2 * k / 100) <= np.abs(sig - 2 * k / 100).min() + 1e-12
    assert space_timesteps(1000, "sigma100max2") == grid          # linear schedule by default


@pytest.mark.parametrize("budget", [1, 3, 20, 50, 100, 250])
def test_budget_gives_exactly_that_many_steps(budget):
    from builder import build_sampler
    cfg = yaml.safe_load(open("configs/MNIST/DDIM/diffusion_config.yaml"))
    cfg["timestep_respacing"] = grid_respacing(f"ddim{budget}", {"sigma_max": 2.0})
    assert cfg["timestep_respacing"] == f"sigma{budget}max2" and respacing_steps(cfg["timestep_respacing"]) == budget
    sampler = build_sampler(cfg)
    assert sampler.num_timesteps == budget and len(set(sampler.timestep_map)) == budget
    if budget <= 100:
        assert max(sampler.timestep_map) == 396                     # top level at σ = 2, nothing above
    else:                                                           # 250 levels collide at the low end
        assert 396 < max(sampler.timestep_map) < 420


def test_configs_without_the_key_are_unchanged():
    for r in ("ddim100", "250", 250, "97,1,1,1", "", None):
        assert grid_respacing(r, None) is r and grid_respacing(r, "uniform") is r
    # explicit grids win over the family; the uniform forms are rewritten
    assert grid_respacing("97,1,1,1", {"sigma_max": 2}) == "97,1,1,1"
    assert grid_respacing(250, {"sigma_max": 1.5}) == "sigma250max1.5"
    assert grid_respacing("sigma20max3", {"sigma_max": 2}) == "sigma20max3"
    from benchmarks import evaluate
    specs = evaluate.discover()
    assert evaluate.respacing_for(specs["CoDPS+"], 100, {}, "gaussian_deblur") == "ddim100"
    assert evaluate.respacing_for(specs["CoDPS+"], 100, {}) == "ddim100"
    assert evaluate.steps_of("sigma50max2") == 50 and evaluate.steps_of("ddim20") == 20


def test_ddrm_configs_use_the_grid_through_the_budget():
    from benchmarks import evaluate
    spec = evaluate.discover()["DDRM"]
    grid = evaluate.time_grid(spec, "gaussian_deblur")
    assert isinstance(grid, dict) and grid["sigma_max"] > 0
    for budget in (20, 50, 100):
        r = evaluate.respacing_for(spec, budget, {}, "gaussian_deblur")
        assert r == f"sigma{budget}max{grid['sigma_max']:g}" and evaluate.steps_of(r) == budget
    # the tuned-values table is keyed by that respacing, so the config's values apply at 100 NFE
    r = evaluate.respacing_for(spec, 100, {}, "gaussian_deblur")
    assert str(evaluate.conditioning(spec, "gaussian_deblur")["tuned_respacing"]) == r


def test_time_grid_is_checked_and_tuned_table_keyed_by_grid(caplog):
    task = {"conditioning": {"method": "DDRM", "params": {"eta": 0.85}, "time_grid": {"sigma_max": 2.0},
                             "tuned": {"ddim100": {"eta": 1.0}, "sigma100max2": {"eta": 0.5}}},
            "data": {"name": "folder"}, "measurement": {"operator": {"name": "gaussian_blur"}}}
    check_task_layout(task)
    r = grid_respacing("ddim100", task["conditioning"]["time_grid"])
    out = apply_tuned(task, r)["conditioning"]
    assert out["params"] == {"eta": 0.5} and out["tuned_respacing"] == "sigma100max2"
    assert apply_tuned(task, "ddim100")["conditioning"]["params"] == {"eta": 1.0}
    with caplog.at_level(logging.WARNING):
        assert apply_tuned(task, "sigma50max2")["conditioning"]["params"] == {"eta": 0.85}
    assert "sigma100max2" in caplog.text and "sigma50max2" in caplog.text
    for bad in ("quad", {"sigma_max": 0}, {"sigma_max": "2"}, {"sigma_max": 2, "other": 1}, 3):
        t = {**task, "conditioning": {**task["conditioning"], "time_grid": bad}}
        with pytest.raises(ConfigError, match="time_grid"):
            check_task_layout(t, "x.yaml")
    from builder import warn_untuned_respacing
    dcfg = {"steps": 1000, "noise_schedule": "linear"}
    assert warn_untuned_respacing({"tuned_respacing": "ddim100"}, {**dcfg, "timestep_respacing": "sigma100max2"}, 100)
    assert warn_untuned_respacing({"tuned_respacing": "sigma100max2"}, {**dcfg, "timestep_respacing": "ddim100"}, 100)
    assert warn_untuned_respacing({"tuned_respacing": "sigma100max2"}, {**dcfg, "timestep_respacing": "sigma50max2"}, 50)
    assert not warn_untuned_respacing({"tuned_respacing": "sigma100max2"},
                                      {**dcfg, "timestep_respacing": "sigma100max2"}, 100)
    assert not warn_untuned_respacing({"tuned_respacing": "ddim100"}, {**dcfg, "timestep_respacing": "100"}, 100)


def test_time_grid_override_both_ways():
    from util.config import apply_overrides
    task = {"conditioning": {"method": "DDRM", "params": {}, "time_grid": {"sigma_max": 2}},
            "data": {"name": "folder"}, "measurement": {"operator": {"name": "gaussian_blur"}}}
    out, _ = apply_overrides({"task": task}, ["task.conditioning.time_grid=uniform"])
    assert out["task"]["conditioning"]["time_grid"] == "uniform"
    out, _ = apply_overrides(out, ["task.conditioning.time_grid={sigma_max: 1.5}"])
    assert out["task"]["conditioning"]["time_grid"] == {"sigma_max": 1.5}
    del task["conditioning"]["time_grid"]
    out, _ = apply_overrides({"task": task}, ["task.conditioning.time_grid={sigma_max: 3}"])
    assert grid_respacing("ddim20", out["task"]["conditioning"]["time_grid"]) == "sigma20max3"


def test_time_grid_without_space_names_the_fix():
    # YAML reads {sigma_max:2} as the key "sigma_max:2" with no value; the error shows the spaced form.
    from util.config import apply_overrides
    task = {"conditioning": {"method": "DDRM", "params": {}}, "data": {"name": "folder"},
            "measurement": {"operator": {"name": "gaussian_blur"}}}
    out, _ = apply_overrides({"task": task}, ["task.conditioning.time_grid={sigma_max:2}"])
    assert out["task"]["conditioning"]["time_grid"] == {"sigma_max:2": None}
    with pytest.raises(ConfigError, match=r"x.yaml: .*space after the colon: \{sigma_max: 2\}$"):
        check_task_layout(out["task"], "x.yaml")


@pytest.mark.parametrize("bad", ["ddimX", "1,x", "sigma10maxY", "fast"])
def test_bad_respacing_names_every_form(bad):
    from guided_diffusion.respace import space_timesteps
    for call in (lambda: respacing_steps(bad), lambda: space_timesteps(1000, bad)):
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert repr(bad) in msg and all(f in msg for f in ("ddimN", "sigma<N>max<S>", "integer", "comma list"))


def test_apply_choice_writes_a_grid_key(tmp_path):
    from benchmarks import tune
    path = tmp_path / "ddrm.yaml"
    path.write_text("method: DDRM\nsampling: DDIM\ndefaults: {}\ntasks:\n  gaussian_deblur:\n"
                    "    time_grid: {sigma_max: 2}\n    params: {eta: 0.85}\n")
    tune.apply_choice(str(path), "gaussian_deblur", "sigma20max2", {"eta": 0.5}, "sigma100max2")
    tune.apply_choice(str(path), "gaussian_deblur", "sigma100max2", {"eta": 0.9}, "sigma100max2")
    cfg = yaml.safe_load(path.read_text())["tasks"]["gaussian_deblur"]
    assert cfg["time_grid"] == {"sigma_max": 2} and cfg["params"] == {"eta": 0.9}
    assert list(cfg["tuned"]) == ["sigma20max2", "sigma100max2"]


def test_main_runs_ddrm_on_the_grid(tmp_path, monkeypatch, capsys):
    """A DDRM MNIST config with a time grid, on the tiny model at ddim3: the run takes 3 steps on
    sigma3max<S> (3 network calls per image), recorded in the summary."""
    data = tmp_path / "data"
    make_images(data, n=1)
    table = yaml.safe_load(open("configs/MNIST/methods/ddrm.yaml"))
    smax = table["tasks"]["gaussian_deblur"]["time_grid"]["sigma_max"]
    args = ["--model_config", TINY_MODEL, "--diffusion_config", TINY_DDIM, "--task_config",
            "configs/MNIST/DDIM/gaussian_deblur_config.yaml", "--method", "DDRM", "--save_dir", str(tmp_path / "out"),
            f"task.data.root={data}", "--num_images", "1", "task.measurement.operator.kernel_size=9"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next((tmp_path / "out").rglob("summary.json")).read_text())
    assert summary["configs"]["diffusion"]["timestep_respacing"] == f"sigma3max{smax:g}"
    assert summary["resolved"]["diffusion"]["num_steps"] == 3
    assert summary["metrics"]["nfe"]["mean"] == 3
    # and uniform when the command line says so (time_grid is a task-config key like any other)
    proc = run_inproc(args[:-1] + ["--save_dir", str(tmp_path / "u"), "task.conditioning.time_grid=uniform",
                                   "task.measurement.operator.kernel_size=9"], tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next((tmp_path / "u").rglob("summary.json")).read_text())
    assert summary["configs"]["diffusion"]["timestep_respacing"] == "ddim3"
