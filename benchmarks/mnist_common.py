"""Shared pieces of the MNIST benchmarks: the embedded configurations, one batched restoration
run with the CLI's per-image seeding, and the classical regularised inverse."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from builder import build_physics, build_model, build_sampler, build_solver
from guided_diffusion.respace import grid_respacing
from sampling import sample
from util.config import load_yaml
from util.metrics import psnr, ssim
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("gaussian_deblur", "motion_deblur", "super_resolution_x2", "super_resolution_x4", "inpainting",
         "inpainting_box")


def discover_methods() -> dict[str, tuple[str, str]]:
    """method -> (sampler folder, task-config prefix), for every method with a committed MNIST
    config for ``gaussian_deblur``: configs/MNIST/<DDPM|DDIM>/<prefix>gaussian_deblur_config.yaml
    whose ``conditioning.method`` names it (so a new method with configs joins the benchmarks
    with no edit here). Ordered DDPM before DDIM, then by file name."""
    found: dict[str, tuple[str, str]] = {}
    suffix = "gaussian_deblur_config.yaml"
    for sampling in ("DDPM", "DDIM"):
        folder = os.path.join(ROOT, "configs", "MNIST", sampling)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(suffix):
                method = (load_yaml(os.path.join(folder, name)).get("conditioning") or {}).get("method")
                if method and method not in found:
                    found[method] = (sampling, name[: -len(suffix)])
    return found


#: method -> (sampler folder, task-config prefix), e.g. {"DPS": ("DDPM", "dps_"), "CoDPS": ("DDPM", ""), ...}
METHODS = discover_methods()


def config_path(sampling: str, name: str) -> str:
    """Path of configs/MNIST/<sampling>/<name>.yaml."""
    return os.path.join(ROOT, "configs", "MNIST", sampling, f"{name}.yaml")


def task_config(method: str, task: str) -> dict:
    """The committed task config of ``method`` (DPS, CoDPS, CoDPS+) for ``task``."""
    sampling, prefix = METHODS[method]
    return load_yaml(config_path(sampling, f"{prefix}{task}_config"))


_MODELS: dict = {}


def load_prior(device: str = "cpu") -> torch.nn.Module:
    """The embedded prior (configs/MNIST/DDPM/model_config.yaml, ckpts/mnist32.pt), cached."""
    if device not in _MODELS:
        cfg = load_yaml(config_path("DDPM", "model_config"))
        cfg["model_path"] = os.path.join(ROOT, cfg["model_path"])
        _MODELS[device] = build_model(cfg, device)
    return _MODELS[device]


@dataclass
class Measured:
    """A batch of measurements: the physics (operator with its draws, noise), y and the clean images x."""
    physics: object
    x: torch.Tensor
    y: torch.Tensor

    @property
    def operator(self):
        """The physics' operator."""
        return self.physics.operator


def measure(task_cfg: dict, x: torch.Tensor, indices, seed: int) -> Measured:
    """Measure clean images x (N, 1, 32, 32) in [-1, 1] as the CLI does for images ``indices``:
    kernels / masks from (seed, i, operator stream), noise from (seed, i, noise stream)."""
    physics = build_physics(task_cfg["measurement"])
    y = physics.measure(x, numpy_rngs(seed, indices, STREAM_OPERATOR), torch_generators(seed, indices, STREAM_NOISE))
    return Measured(physics, x, y)


def restore(method: str, task: str, m: Measured, indices, seed: int, params: dict | None = None,
            progress: bool = False) -> tuple[torch.Tensor, float, int]:
    """Posterior sample for each measurement with ``method``'s committed config (``params``
    override the conditioning params). Returns (x0 (N,1,32,32), seconds per image, NFE)."""
    cfg = task_config(method, task)
    cond = dict(cfg["conditioning"])
    cond["params"] = {**(cond.get("params") or {}), **(params or {})}
    solver = build_solver(cond, m.physics)
    dcfg = load_yaml(config_path(METHODS[method][0], "diffusion_config"))
    dcfg["timestep_respacing"] = grid_respacing(dcfg["timestep_respacing"], cond.get("time_grid"))   # as main.py
    sampler = build_sampler(dcfg)
    gens = torch_generators(seed, indices, STREAM_SAMPLER)
    t0 = time.perf_counter()
    res = sample(load_prior(), sampler, randn(m.x.shape[1:], gens), m.y, solver, m.physics, gens,
                 progress=progress, desc=f"{method} {task}")
    return res.x0, (time.perf_counter() - t0) / len(indices), res.nfe


def classical_inverse(m: Measured, lam: float) -> torch.Tensor:
    """Regularised inverse x = Aᵀ (A Aᵀ + λ I)⁻¹ y (Tikhonov / minimum-norm least squares with
    ridge λ), computed with the physics' ``cov_solve`` (r² = 1, σ² = λ)."""
    with torch.no_grad():
        return m.physics.A_T(m.physics.cov_solve(m.y, 1.0, lam))


def scores(x: torch.Tensor, ref: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-image PSNR and SSIM on (x + 1) / 2 clipped to [0, 1] (util.metrics, scikit-image)."""
    return psnr(x, ref), ssim(x, ref)


def digits(split: str, num: int) -> tuple[torch.Tensor, list[int]]:
    """The first ``num`` digits of an MNIST split as (num, 1, 32, 32) in [-1, 1] and their indices."""
    from data.mnist import load_mnist32, to_model_range
    imgs, _ = load_mnist32(split)
    if not 1 <= num <= len(imgs):
        raise ValueError(f"--num must be in 1..{len(imgs)}, got {num}")
    return torch.from_numpy(to_model_range(imgs[:num])), list(range(num))


LAMBDAS = tuple(float(v) for v in np.logspace(-4, 1, 16))


def tune_lambda(task: str, seed: int, num: int) -> float:
    """λ of the classical inverse maximising mean PSNR on the first ``num`` tune digits."""
    x, idx = digits("tune", num)
    m = measure(task_config("CoDPS+", task), x, idx, seed)
    best = max(LAMBDAS, key=lambda lam: float(np.mean(scores(classical_inverse(m, lam), x)[0])))
    return best
