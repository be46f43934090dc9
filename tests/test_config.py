"""Config loading and ``section.key=value`` overrides (util/config.py)."""
from __future__ import annotations

import pytest
import yaml

from builder import diffusion_config_keys, model_config_keys
from util.config import ConfigError, apply_overrides, check_task_layout, load_yaml, parse_value

VALID = {"model": model_config_keys(), "diffusion": diffusion_config_keys()}


def configs():
    return {"model": {"image_size": 32, "num_channels": 32, "attention_resolutions": 16, "model_path": ""},
            "diffusion": {"sampler": "ddim", "steps": 1000, "timestep_respacing": "ddim100", "clip_denoised": True},
            "task": {"conditioning": {"method": "CoDPS+", "params": {"scale": 0.05, "use_A_AT": True}},
                     "data": {"name": "ffhq", "root": "./x"},
                     "measurement": {"operator": {"name": "inpainting", "mask_prob_range": (0.7, 0.8)},
                                     "noise": {"name": "gaussian", "sigma": 0.05}}}}


@pytest.mark.parametrize("text,value", [("1e3", 1000.0), ("5e2", 500.0), ("1e-2", 0.01), ("-2E+1", -20.0),
                                        ("3", 3), ("0.5", 0.5), ("true", True), ("ddim50", "ddim50"),
                                        ('"1e3"', "1e3"), ("", ""), ("[0.5, 0.6]", [0.5, 0.6])])
def test_parse_value(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_loader_tuple_and_exponent(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("r: !!python/tuple [0.70, 0.80]\nn: 1e3\ns: '1e3'\n")
    assert load_yaml(str(path)) == {"r": (0.7, 0.8), "n": 1000.0, "s": "1e3"}


def test_loader_constructs_no_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("a: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(str(path))


@pytest.mark.parametrize("content,match", [(None, "does not exist"), ("a: [1, 2\n", "not valid YAML"),
                                           ("- 1\n- 2\n", "must hold a mapping")])
def test_loader_errors(tmp_path, content, match):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_yaml(str(path))


def test_loader_directory_is_named_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; expected a YAML file"):
        load_yaml(str(tmp_path))


def test_loader_refuses_a_repeated_key(tmp_path):
    (tmp_path / "t.yaml").write_text("a: 1\nb:\n  c: 2\n  d: [1, 2]\n  c: 3\n")
    with pytest.raises(ConfigError, match=r"t.yaml'?: repeated key 'c' \(first on line 3, again on line 5\)"):
        load_yaml(str(tmp_path / "t.yaml"))
    (tmp_path / "ok.yaml").write_text("a: {c: 1}\nb: {c: 2}\n")   # the same key in two mappings is fine
    assert load_yaml(str(tmp_path / "ok.yaml")) == {"a": {"c": 1}, "b": {"c": 2}}


def test_overrides_apply_and_convert():
    out, applied = apply_overrides(configs(), [
        "task.conditioning.params.scale=1e3", "diffusion.timestep_respacing=ddim50",
        "model.model_path=ckpts/x.pt", "model.attention_resolutions=32,16,8", "diffusion.timestep_respacing=1000",
        "task.measurement.operator.mask_prob_range=[0.5, 0.6]", "task.conditioning.params.t_div=15",
        "model.in_channels=1", "task.data.root=/tmp/data"], VALID)
    assert out["task"]["conditioning"]["params"]["scale"] == 1000.0
    assert out["diffusion"]["timestep_respacing"] == 1000
    assert out["model"]["model_path"] == "ckpts/x.pt" and out["model"]["attention_resolutions"] == "32,16,8"
    assert out["task"]["measurement"]["operator"]["mask_prob_range"] == (0.5, 0.6)
    assert out["model"]["in_channels"] == 1   # a valid key missing from the file may be added
    assert applied["task.conditioning.params.scale"] == 1000.0
    assert configs()["task"]["conditioning"]["params"]["scale"] == 0.05   # input not modified


@pytest.mark.parametrize("assignment,match", [
    ("model.nope=1", "valid keys: .*num_channels"),
    ("diffusion.nope=1", "valid keys: .*timestep_respacing"),
    ("task.nope.x=1", "valid keys: conditioning, data, measurement"),
    ("task.conditioning.nope=1", "valid keys: method, params"),
    ("other.x=1", "valid sections: model, diffusion, task"),
    ("model.image_size", "section.key=value"),
    ("model=3", "give a key"),
])
def test_unknown_keys_list_valid_ones(assignment, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(configs(), [assignment], VALID)


@pytest.mark.parametrize("assignment,match", [
    ("task.conditioning.params.scale=abc", "expected a number"),
    ("task.conditioning.params.use_A_AT=1", "expected a bool"),
    ("model.num_channels=true", "expected a number"),
    ("model.model_path=5", "expected a str"),
    ("diffusion.sampler=[1, 2]", "expected a str"),
    ("task.conditioning.params.scale.x=1", "not a section"),
])
def test_wrong_types_fail(assignment, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(configs(), [assignment], VALID)


def test_auto_replaces_a_number_and_back():
    """``scale=auto`` was refused as "expected a number"; auto in the file takes a number back."""
    out, applied = apply_overrides(configs(), ["task.conditioning.params.scale=auto"], VALID)
    assert out["task"]["conditioning"]["params"]["scale"] == "auto"
    assert applied == {"task.conditioning.params.scale": "auto"}
    out, _ = apply_overrides(out, ["task.conditioning.params.scale=0.2"], VALID)
    assert out["task"]["conditioning"]["params"]["scale"] == 0.2
    with pytest.raises(ConfigError, match="expected a number"):
        apply_overrides(configs(), ["task.conditioning.params.scale=automatic"], VALID)


def test_auto_scale_override_builds_the_solver():
    """End to end through the builder: the override gives a solver with scale 'auto'; a key that
    takes no 'auto' is refused by its component in one line."""
    from builder import build_solver
    cfg, _ = apply_overrides(configs(), ["task.conditioning.params.scale=auto"], VALID)
    solver = build_solver(cfg["task"]["conditioning"])
    assert solver.scale == "auto"
    cfg, _ = apply_overrides(configs(), ["task.conditioning.params.t_div=auto"], VALID)
    with pytest.raises(ValueError, match="t_div.*must be a number"):
        build_solver(cfg["task"]["conditioning"])


def test_task_layout():
    check_task_layout(configs()["task"])
    bad = configs()["task"]
    bad["extra"] = {}
    with pytest.raises(ConfigError, match="unknown section 'extra'"):
        check_task_layout(bad)
    missing = configs()["task"]
    del missing["measurement"]["operator"]
    with pytest.raises(ConfigError, match="measurement.operator"):
        check_task_layout(missing)


def test_tuned_respacing_is_accepted_and_checked():
    task = configs()["task"]
    task["conditioning"]["tuned_respacing"] = "ddim100"
    check_task_layout(task)
    task["conditioning"]["tuned_respacing"] = 250
    check_task_layout(task)
    task["conditioning"]["tuned_respacing"] = [100]
    with pytest.raises(ConfigError, match="tuned_respacing must be a timestep_respacing"):
        check_task_layout(task)
    out, _ = apply_overrides(configs(), ["task.conditioning.tuned_respacing=ddim50"], VALID)
    assert out["task"]["conditioning"]["tuned_respacing"] == "ddim50"


def test_safe_load_default_unchanged():
    """The exponent resolver is added to our loader only, not to PyYAML's SafeLoader."""
    assert yaml.safe_load("a: 1e3") == {"a": "1e3"}


def test_missing_noise_section_warns_once_with_sigma(caplog):
    """A task config without measurement.noise (the paper's IMAGENET DDPM inpainting config) is
    measured noiselessly, and one warning line says so and gives the σ used."""
    import logging

    from builder import build_measurement
    measurement = {"operator": {"name": "gaussian_blur", "kernel_size": 5, "intensity": 1.0}}
    with caplog.at_level(logging.WARNING, logger="builder"):
        _, noiser = build_measurement(measurement)
    assert noiser.sigma == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "measurement.noise" in warnings[0].getMessage() and "sigma_n = 0" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="builder"):
        _, noiser = build_measurement({**measurement, "noise": {"name": "gaussian", "sigma": 0.05}})
    assert noiser.sigma == 0.05 and not caplog.records
