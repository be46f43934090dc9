"""Shared pieces of the MNIST benchmarks: the repository root, the MNIST tasks, the embedded
prior and the digits of a split. (The restoration itself is :func:`restore.restore`; the
configurations are read through :mod:`builder`.)"""
from __future__ import annotations

import os

import torch

from builder import build_model
from util.config import load_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The benchmarked MNIST tasks, in table order; a new composed task config
#: configs/MNIST/DDIM/<task>_config.yaml (with ``conditioning.task``) joins after them.
KNOWN_TASKS = ("gaussian_deblur", "motion_deblur", "super_resolution_x2", "super_resolution_x4", "inpainting",
               "inpainting_box")


def discover_tasks(root: str = ROOT) -> tuple[str, ...]:
    """:data:`KNOWN_TASKS` that have a task config in configs/MNIST/DDIM, then every other
    composed task config there (``conditioning.task`` = its name), sorted."""
    folder = os.path.join(root, "configs", "MNIST", "DDIM")
    found = set()
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith("_config.yaml") and name not in ("model_config.yaml", "diffusion_config.yaml"):
            cond = load_yaml(os.path.join(folder, name), "task config").get("conditioning") or {}
            if cond.get("task") == name[:-len("_config.yaml")]:
                found.add(cond["task"])
    return tuple(t for t in KNOWN_TASKS if t in found) + tuple(sorted(found - set(KNOWN_TASKS)))


TASKS = discover_tasks()


def config_path(sampling: str, name: str) -> str:
    """Path of configs/MNIST/<sampling>/<name>.yaml."""
    return os.path.join(ROOT, "configs", "MNIST", sampling, f"{name}.yaml")


_MODELS: dict = {}


def load_prior(device: str = "cpu") -> torch.nn.Module:
    """The embedded prior (configs/MNIST/DDPM/model_config.yaml, ckpts/mnist32.pt), cached."""
    if device not in _MODELS:
        cfg = load_yaml(config_path("DDPM", "model_config"))
        cfg["model_path"] = os.path.join(ROOT, cfg["model_path"])
        _MODELS[device] = build_model(cfg, device)
    return _MODELS[device]


def digits(split: str, num: int) -> tuple[torch.Tensor, list[int]]:
    """The first ``num`` digits of an MNIST split as (num, 1, 32, 32) in [-1, 1] and their indices."""
    from data.mnist import load_mnist32, to_model_range
    imgs, _ = load_mnist32(split)
    if not 1 <= num <= len(imgs):
        raise ValueError(f"--num must be in 1..{len(imgs)}, got {num}")
    return torch.from_numpy(to_model_range(imgs[:num])), list(range(num))
