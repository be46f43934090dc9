"""Every shipped config (configs/**) parses and builds its sampler, operator, noise and solver
(without loading the large model), and the paper's configurations hold the paper's values."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from builder import (build_physics, build_sampler, build_solver, diffusion_config_keys, dry_run_operator,
                     image_shape, model_config_keys)
from util.config import check_task_layout, load_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIRS = sorted(p.parent for p in (REPO / "configs").glob("**/model_config.yaml"))
TASK_CONFIGS = sorted(p for d in CONFIG_DIRS for p in d.glob("*_config.yaml")
                      if p.name not in ("model_config.yaml", "diffusion_config.yaml"))


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def test_paper_configs_are_there():
    names = {rel(d) for d in CONFIG_DIRS}
    assert {"configs/FFHQ/DDIM", "configs/FFHQ/DDPM", "configs/IMAGENET/DDIM", "configs/IMAGENET/DDPM"} <= names
    for d in ("FFHQ/DDIM", "FFHQ/DDPM", "IMAGENET/DDIM", "IMAGENET/DDPM"):
        for task in ("gaussian_deblur", "motion_deblur", "super_resolution", "inpainting"):
            assert (REPO / "configs" / d / f"{task}_config.yaml").is_file()
            if d.endswith("DDPM"):
                assert (REPO / "configs" / d / f"dps_{task}_config.yaml").is_file()


@pytest.mark.parametrize("config_dir", CONFIG_DIRS, ids=rel)
def test_model_and_diffusion_configs(config_dir):
    model = load_yaml(str(config_dir / "model_config.yaml"))
    assert set(model) <= set(model_config_keys(model)), set(model) - set(model_config_keys(model))
    image_shape(model)
    diffusion = load_yaml(str(config_dir / "diffusion_config.yaml"))
    assert set(diffusion) <= set(diffusion_config_keys())
    # a diffusers checkpoint is not shipped: its sampler is built on the default schedule here
    sampler = build_sampler(diffusion, model if model.get("kind") != "diffusers" else None)
    assert sampler.num_timesteps > 0


@pytest.mark.parametrize("task_path", TASK_CONFIGS, ids=rel)
def test_task_config_builds(task_path):
    model = load_yaml(str(task_path.parent / "model_config.yaml"))
    task = load_yaml(str(task_path))
    check_task_layout(task, rel(task_path))
    physics = build_physics(task["measurement"], "cpu")
    shape = image_shape(model)
    dry_run_operator(physics, shape, seed=0)
    build_solver(task["conditioning"], physics)
    y = physics.A(torch.zeros(1, *shape))
    assert physics.display(y).shape == (1, *shape)


PAPER_MODELS = {
    "FFHQ": dict(num_channels=128, num_res_blocks=1, attention_resolutions=16, model_path="ckpts/ffhq_10m.pt"),
    "IMAGENET": dict(num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8",
                     model_path="ckpts/256x256_diffusion_uncond.pt"),
}
COMMON_MODEL = dict(image_size=256, learn_sigma=True, num_heads=4, num_head_channels=64, use_scale_shift_norm=True,
                    resblock_updown=True, class_cond=False, use_fp16="auto")

#: (scale, t_div, div_ratio, inv_var) of the paper, by dataset / sampler / task.
PAPER_HP = {
    ("FFHQ", "DDIM"): {"gaussian_deblur": (0.05, 15, 10, 1), "motion_deblur": (0.05, 15, 20, 1),
                       "super_resolution": (0.05, 15, 5, 2), "inpainting": (0.4, 10, 100, 0)},
    ("FFHQ", "DDPM"): {"gaussian_deblur": (0.01, 200, 10, 0.1), "motion_deblur": (0.01, 200, 10, 0.1),
                       "super_resolution": (0.01, 100, 10, 0.1), "inpainting": (0.4, 80, 1000, 500)},
    ("IMAGENET", "DDIM"): {"gaussian_deblur": (0.04, 15, 5, 2), "motion_deblur": (0.04, 25, 4, 2),
                           "super_resolution": (0.05, 20, 5, 2), "inpainting": (0.4, 10, 100, 0)},
    ("IMAGENET", "DDPM"): {"gaussian_deblur": (0.01, 200, 10, 0.1), "motion_deblur": (0.01, 200, 10, 0.1),
                           "super_resolution": (0.02, 200, 10, 0.01), "inpainting": (0.02, 80, 100, 10)},
}
PAPER_OPERATORS = {
    "gaussian_deblur": {"name": "gaussian_blur", "kernel_size": 61, "intensity": 3.0},
    "motion_deblur": {"name": "motion_blur", "kernel_size": 61, "intensity": 0.5},
    "super_resolution": {"name": "super_resolution", "in_shape": (1, 3, 256, 256), "scale_factor": 4,
                         "degradation": "gaussian"},
    "inpainting": {"name": "inpainting", "mask_type": "random", "mask_prob_range": (0.7, 0.8), "image_size": 256},
}


@pytest.mark.parametrize("dataset,sampler", sorted(PAPER_HP))
def test_paper_values(dataset, sampler):
    d = REPO / "configs" / dataset / sampler
    model = load_yaml(str(d / "model_config.yaml"))
    assert {k: model[k] for k in PAPER_MODELS[dataset]} == PAPER_MODELS[dataset]
    assert {k: model[k] for k in COMMON_MODEL} == COMMON_MODEL
    diffusion = load_yaml(str(d / "diffusion_config.yaml"))
    assert diffusion["sampler"] == sampler.lower() and diffusion["steps"] == 1000
    assert (diffusion["noise_schedule"], diffusion["model_mean_type"], diffusion["model_var_type"]) == \
        ("linear", "epsilon", "learned_range")
    assert diffusion["clip_denoised"] is True
    assert str(diffusion["timestep_respacing"]) == ("ddim100" if sampler == "DDIM" else "1000")
    for task, (scale, t_div, div_ratio, inv_var) in PAPER_HP[(dataset, sampler)].items():
        cfg = load_yaml(str(d / f"{task}_config.yaml"))
        assert cfg["conditioning"] == {"method": "CoDPS+" if sampler == "DDIM" else "CoDPS",
                                       "params": {"scale": scale, "t_div": t_div, "div_ratio": div_ratio,
                                                  "inv_var": inv_var, "use_A_AT": True}}, task
        assert cfg["measurement"]["operator"] == PAPER_OPERATORS[task]
        assert cfg["measurement"]["noise"] == {"name": "gaussian", "sigma": 0.05}
        assert cfg["data"]["name"] == dataset.lower()
        if sampler == "DDPM":
            dps = load_yaml(str(d / f"dps_{task}_config.yaml"))
            assert dps["conditioning"] == {"method": "ps", "params": {"scale": 0.5 if task == "inpainting" else 0.3}}
            assert dps["measurement"] == cfg["measurement"]


MNIST_TASKS = ("gaussian_deblur", "motion_deblur", "super_resolution_x2", "super_resolution_x4", "inpainting",
               "inpainting_box")


@pytest.mark.parametrize("task", MNIST_TASKS)
def test_mnist_pigdm_table_has_every_task(task):
    """ΠGDM has an entry for every MNIST task in configs/MNIST/methods/pigdm.yaml with exactly the
    solver's parameters; it runs on the task's config (the CoDPS+ measurement, so the methods
    compare on the same y); the entries are marked UNTUNED."""
    from solvers import get_solver   # noqa: F401  (registers the solvers)
    from solvers.pigdm import PiGDM
    table = load_yaml(str(REPO / "configs" / "MNIST" / "methods" / "pigdm.yaml"))
    assert table["method"] == "PiGDM" and table["sampling"] == "DDIM"
    entry = table["tasks"][task]
    assert set({**table["defaults"], **entry["params"]}) == set(PiGDM.params)
    assert "untuned" in entry["note"].lower()
    assert load_yaml(str(REPO / "configs" / "MNIST" / "DDIM" / f"{task}_config.yaml"))["conditioning"]["task"] == task


@pytest.mark.parametrize("sampler", ["DDIM", "DDPM"])
def test_mnist_configs_record_the_respacing_they_were_tuned_at(sampler):
    """Every tuned entry of an MNIST method table says which timestep_respacing its scale / t_div
    were tuned at, and it is the shipped diffusion config's of the table's folder (so the default
    run gives no warning); the ΠGDM entries, marked UNTUNED, have nothing to record."""
    from builder import compose_conditioning, warn_untuned_respacing
    from guided_diffusion.gaussian_diffusion import create_sampler
    from guided_diffusion.respace import grid_respacing
    d = REPO / "configs" / "MNIST" / sampler
    diffusion = load_yaml(str(d / "diffusion_config.yaml"))
    steps = create_sampler(**diffusion).num_timesteps
    tables = [load_yaml(str(p)) for p in sorted((REPO / "configs" / "MNIST" / "methods").glob("*.yaml"))]
    tables = [t for t in tables if t["sampling"] == sampler]
    assert len(tables) >= (2 if sampler == "DDPM" else 6)
    for table in tables:
        for task, entry in table["tasks"].items():
            cond = compose_conditioning({"method": table["method"], "task": task}, str(d / f"{task}_config.yaml"))
            if "untuned" in (entry.get("note") or "").lower():
                assert "tuned_respacing" not in cond, (table["method"], task)
                continue
            # on the method's time grid (time_grid), as main.py runs it
            run = {**diffusion, "timestep_respacing": grid_respacing(diffusion["timestep_respacing"],
                                                                     cond.get("time_grid"))}
            assert str(cond.get("tuned_respacing")) == str(run["timestep_respacing"]), (table["method"], task)
            assert not warn_untuned_respacing(cond, run, steps)
