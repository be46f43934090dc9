"""The run specification and the composed configs (issue 22): every shipped (task config, budget)
case resolves to the values it had before the MNIST configs were recomposed
(tests/fixtures/resolution_v1.json, made on f745ccf by tests/fixtures/make_resolution.py), a
method switch takes only that method's values, and the converter is idempotent."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder import _with_defaults, build_physics, build_solver, build_spec, diffusion_config_keys, \
    model_config_keys, operator_kwargs
from util.config import apply_overrides, load_yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((REPO / "tests" / "fixtures" / "resolution_v1.json").read_text())


def new_location(old: str) -> tuple[str, str | None]:
    """(task config path, method override) that replaces an old-layout config path: a per-method
    MNIST config ``<prefix>_<task>_config.yaml`` became the task config ``<task>_config.yaml``
    with ``task.conditioning.method``; the paper's configs are unchanged."""
    path = REPO / old
    if path.is_file():
        return old, None
    folder, stem = path.parent, path.name[:-len("_config.yaml")]
    bases = [p.name[:-len("_config.yaml")] for p in folder.glob("*_config.yaml")]
    task = max((b for b in bases if stem.endswith("_" + b)), key=len)
    return str((folder / f"{task}_config.yaml").relative_to(REPO)), "method"


def resolve_now(task_path: str, method: str | None, respacing: str | None) -> dict:
    """The case's values on the current code (configs + overrides -> RunSpec -> solver)."""
    d = REPO / Path(task_path).parent
    configs = {"model": load_yaml(str(d / "model_config.yaml")), "diffusion": load_yaml(str(d / "diffusion_config.yaml")),
               "task": load_yaml(str(REPO / task_path))}
    overrides = ([f"task.conditioning.method={method}"] if method else []) + \
                ([f"diffusion.timestep_respacing={respacing}"] if respacing else [])
    original = configs["task"]["conditioning"]["method"]
    configs, applied = apply_overrides(configs, overrides, {"model": model_config_keys(),
                                                            "diffusion": diffusion_config_keys()})
    spec = build_spec(configs, applied, str(REPO / task_path), original)
    physics = build_physics(spec.measurement)
    solver = build_solver({"method": spec.method, "params": spec.params})
    name, kwargs = operator_kwargs(spec.measurement)
    noise = dict(spec.measurement.get("noise") or {"name": "clean"})
    noise_name = noise.pop("name")
    return {"timesteps": spec.timesteps, "sampler": spec.diffusion.get("sampler", "ddpm"),
            "eta": spec.diffusion.get("eta", 1.0), "method": spec.method,
            "params": {k: getattr(solver, k, p.default) for k, p in type(solver).params.items()},
            "operator": {"name": name, **_with_defaults(type(physics.operator).__init__, kwargs)},
            "noise": {"name": noise_name, **_with_defaults(type(physics.noiser).__init__, noise)},
            "data": spec.data}


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=list))


@pytest.mark.parametrize("case", sorted(FIXTURE), ids=lambda c: c.replace("configs/", ""))
def test_every_case_resolves_as_before(case):
    old, budget = case.rsplit("@", 1)
    task_path, switch = new_location(old)
    expected = FIXTURE[case]
    got = resolve_now(task_path, expected["method"] if switch else None, None if budget == "default" else budget)
    assert _jsonable(got) == expected


def test_sixteen_paper_configs_are_in_the_fixture_and_unchanged_on_disk():
    paper = [f"configs/{ds}/{s}/{t}_config.yaml@default" for ds in ("FFHQ", "IMAGENET") for s in ("DDIM", "DDPM")
             for t in ("gaussian_deblur", "motion_deblur", "super_resolution", "inpainting")]
    assert all(c in FIXTURE for c in paper) and len(paper) == 16
    for c in paper:
        assert (REPO / c.split("@")[0]).is_file()


def test_method_switch_takes_only_that_methods_values():
    """DDRM on the CoDPS+ task config gets DDRM's tuned eta at ddim50 on its own time grid; a
    command-line parameter wins over the tuned table; CoDPS+'s scale / t_div never pass on."""
    got = resolve_now("configs/MNIST/DDIM/motion_deblur_config.yaml", "DDRM", "ddim50")
    assert got["method"] == "DDRM" and got["params"]["eta"] == 0.5493 and set(got["params"]) == {"eta", "eta_b", "sv_zero"}
    assert len(got["timesteps"]) == 50 and got["timesteps"][-1] == 338   # sigma50max1.5
    d = REPO / "configs/MNIST/DDIM"
    configs = {k: load_yaml(str(d / f"{f}.yaml")) for k, f in
               (("model", "model_config"), ("diffusion", "diffusion_config"), ("task", "motion_deblur_config"))}
    configs, applied = apply_overrides(configs, ["task.conditioning.method=DDRM", "task.conditioning.params.eta=0.3"])
    spec = build_spec(configs, applied, str(d / "motion_deblur_config.yaml"), "CoDPS+")
    assert spec.params["eta"] == 0.3 and spec.respacing == "sigma100max1.5"
    assert spec.tuned_from.endswith(os.path.join("methods", "ddrm.yaml") + " [motion_deblur]")


def test_old_layout_method_switch_drops_the_other_methods_values():
    d = REPO / "configs/FFHQ/DDIM"
    configs = {k: load_yaml(str(d / f"{f}.yaml")) for k, f in
               (("model", "model_config"), ("diffusion", "diffusion_config"), ("task", "motion_deblur_config"))}
    configs, applied = apply_overrides(configs, ["task.conditioning.method=DDRM"])
    spec = build_spec(configs, applied, str(d / "motion_deblur_config.yaml"), "CoDPS+")
    assert spec.method == "DDRM" and spec.params == {}
    build_solver({"method": spec.method, "params": spec.params})   # no CoDPS+ parameter reaches DDRM


def test_converter_is_idempotent_and_measurements_are_written_once(tmp_path):
    from tools.compose_configs import convert
    assert convert(str(REPO / "configs" / "MNIST"), dry_run=True) == []
    files = [p for p in (REPO / "configs" / "MNIST").rglob("*.yaml")
             if any(line.startswith("measurement:") for line in p.read_text().splitlines())]
    # written once per task and sampler (DDIM, DDPM): 12 for the six linear tasks of issue 22, plus
    # phase_retrieval and hdr (issue 23)
    from benchmarks.mnist_common import discover_tasks
    assert len(files) <= 2 * len(discover_tasks(str(REPO))) == 16


def test_converter_turns_an_old_layout_config_into_a_table_entry(tmp_path):
    """A branch's new old-layout config (method X for motion_deblur) becomes X's table entry and
    resolves to its own values."""
    import shutil
    from tools.compose_configs import convert
    ds = tmp_path / "MNIST"
    shutil.copytree(REPO / "configs" / "MNIST", ds)
    old = load_yaml(str(ds / "DDIM" / "motion_deblur_config.yaml"))
    old["conditioning"] = {"method": "PiGDM", "params": {"scale": 0.5}, "tuned": {"ddim20": {"scale": 0.25}}}
    import yaml
    (ds / "DDIM" / "pigdm_motion_deblur_config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    actions = convert(str(ds))
    assert len(actions) == 1 and not (ds / "DDIM" / "pigdm_motion_deblur_config.yaml").exists()
    table = load_yaml(str(ds / "methods" / "pigdm.yaml"))
    entry = table["tasks"]["motion_deblur"]
    assert {**table["defaults"], **entry["params"]} == {"scale": 0.5} and entry["tuned"] == {"ddim20": {"scale": 0.25}}
    assert convert(str(ds)) == []


def test_cli_method_flag_threads_and_spec_in_summary(tmp_path, monkeypatch, capsys):
    """--method DDRM on a composed MNIST task config (tiny model, 3 steps): DDRM runs on its own
    time grid with its table's values, into <save_dir>/MNIST/DDIM/ddrm_<task>; summary.json records
    the run specification and --threads."""
    from cli_helpers import TINY_DDIM, TINY_MODEL, make_images, run_inproc
    data = tmp_path / "data"
    make_images(data, n=1)
    args = ["--model_config", TINY_MODEL, "--diffusion_config", TINY_DDIM, "--task_config",
            "configs/MNIST/DDIM/gaussian_deblur_config.yaml", "--method", "DDRM", "--threads", "1",
            "--save_dir", str(tmp_path / "out"), f"task.data.root={data}", "--num_images", "1",
            "task.measurement.operator.kernel_size=9"]
    proc = run_inproc(args, tmp_path, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "MNIST" / "DDIM" / "ddrm_gaussian_deblur" / "summary.json").read_text())
    spec = summary["spec"]
    table = load_yaml(str(REPO / "configs/MNIST/methods/ddrm.yaml"))
    smax = table["tasks"]["gaussian_deblur"]["time_grid"]["sigma_max"]
    assert spec["method"] == "DDRM" and spec["task_method"] == "CoDPS+" and spec["respacing"] == f"sigma3max{smax:g}"
    assert spec["num_steps"] == 3 == len(spec["timesteps"]) and summary["threads"] == 1 == spec["threads"]
    assert set(spec["params"]) == {"eta", "eta_b"} and "scale" not in spec["params"]
    assert summary["resolved"]["solver"]["method"] == "DDRM"


def test_a_new_task_is_one_yaml(tmp_path):
    """A composed task config dropped into configs/MNIST/DDIM joins the benchmarks' tasks, and any
    method runs on it (with its class defaults and a warning, until its table gets an entry)."""
    import shutil
    from benchmarks.mnist_common import KNOWN_TASKS, discover_tasks
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    d = tmp_path / "configs" / "MNIST" / "DDIM"
    text = (d / "motion_deblur_config.yaml").read_text().replace("task: motion_deblur", "task: motion_deblur_long")
    (d / "motion_deblur_long_config.yaml").write_text(text.replace("kernel_size: 13", "kernel_size: 17"))
    shipped = discover_tasks(str(REPO))
    assert shipped[:len(KNOWN_TASKS)] == KNOWN_TASKS and {"hdr", "phase_retrieval"} <= set(shipped)
    assert discover_tasks(str(tmp_path)) == KNOWN_TASKS + tuple(sorted(set(shipped[len(KNOWN_TASKS):])
                                                                       | {"motion_deblur_long"}))
    configs = {"model": {}, "diffusion": load_yaml(str(d / "diffusion_config.yaml")),
               "task": load_yaml(str(d / "motion_deblur_long_config.yaml"))}
    configs, applied = apply_overrides(configs, ["task.conditioning.method=DDRM"])
    spec = build_spec(configs, applied, str(d / "motion_deblur_long_config.yaml"), "CoDPS+")
    assert spec.method == "DDRM" and spec.params == {"eta_b": 1.0} and spec.measurement["operator"]["kernel_size"] == 17


def test_default_threads_do_not_oversubscribe(monkeypatch):
    """OMP_NUM_THREADS wins; else the cores the load leaves idle, at least 1, at most the cores."""
    from util import threads
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "x")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        threads.default_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    for load, want in ((0.0, 8), (2.6, 5), (7.9, 1), (30.0, 1), (-1.0, 8)):
        monkeypatch.setattr(threads, "machine_load", lambda load=load: load)
        assert threads.default_threads() == want, load
