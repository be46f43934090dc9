"""How much the batch size changes the results, per solver, with the embedded MNIST prior
(docs/cli.md, "Batch size"): the first N test digits of samples/mnist sampled one at a time and
all in one batch, at the shipped MNIST configs (motion deblurring).

    python -m benchmarks.batch_size --images 4      # about 5 minutes on one CPU thread

Prints, per solver: whether x0 is bitwise equal, max |Δ x0| on [-1, 1], the largest difference
in 8-bit PNG levels and the largest PSNR change (dB).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from builder import build_model, build_problem, build_spec  # noqa: E402
from restore import restore  # noqa: E402
from util.config import apply_overrides, load_yaml  # noqa: E402
from util.image_io import to_uint8_image  # noqa: E402
from util.metrics import psnr, to_unit  # noqa: E402

#: name -> (sampling type, task config, overrides)
CASES = {
    "CoDPS+ (DDIM 100)": ("DDIM", "motion_deblur_config", []),
    "CoDPS (DDPM 250)": ("DDPM", "motion_deblur_config", []),
    "DPS (DDPM 250)": ("DDPM", "motion_deblur_config", ["task.conditioning.method=DPS"]),
    "PiGDM (DDIM 100)": ("DDIM", "motion_deblur_config", ["task.conditioning.method=PiGDM"]),
}


def sample_in_batches(sampling: str, task: str, overrides: list[str], batches: list[list[int]], seed: int = 22):
    """x0 and the clean image of every digit, sampled in ``batches`` as runner.Runner does."""
    d = os.path.join(ROOT, "configs", "MNIST", sampling)
    configs = {"model": load_yaml(os.path.join(d, "model_config.yaml")),
               "diffusion": load_yaml(os.path.join(d, "diffusion_config.yaml")),
               "task": load_yaml(os.path.join(d, f"{task}.yaml"))}
    configs["task"]["data"]["root"] = os.path.join(ROOT, "samples", "mnist")
    configs["model"]["model_path"] = os.path.join(ROOT, configs["model"]["model_path"])
    original = configs["task"]["conditioning"]["method"]
    configs, applied = apply_overrides(configs, overrides)
    problem = build_problem(build_spec(configs, applied, os.path.join(d, f"{task}.yaml"), original), "cpu", seed)
    model = build_model(configs["model"], "cpu")
    return sample_problem_in_batches(problem, model, batches, seed)


def sample_problem_in_batches(problem, model, batches: list[list[int]], seed: int = 22
                              ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """({i: x0 (C, H, W)}, {i: clean image (C, H, W)}) for every image index in ``batches``, each
    batch measured and sampled as runner.Runner does (image i's kernel or mask, noise and sampler
    noise from generators seeded by (seed, i))."""
    x0s, xs = {}, {}
    for idx in batches:
        x = torch.stack([problem.dataset.load(i) for i in idx])
        res = restore(model, problem.sampler, problem.physics, problem.solver, idx, seed, x=x)
        for k, i in enumerate(idx):
            x0s[i], xs[i] = res.x0[k].detach().clone(), x[k]
    return x0s, xs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4, help="the first N digits (batch N against N batches of 1)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    n = args.images
    print("| solver | bitwise | max abs dx0 | max 8-bit levels | max abs dPSNR (dB) | seconds |")
    print("|---|---|---|---|---|---|")
    for name, (sampling, task, overrides) in CASES.items():
        start = time.perf_counter()
        one, x = sample_in_batches(sampling, task, overrides, [[i] for i in range(n)])
        many, _ = sample_in_batches(sampling, task, overrides, [list(range(n))])
        diff = max(float((one[i] - many[i]).abs().max()) for i in range(n))
        levels = max(int(np.abs(to_uint8_image(to_unit(one[i][None])[0]).astype(int)
                                - to_uint8_image(to_unit(many[i][None])[0]).astype(int)).max()) for i in range(n))
        dpsnr = max(abs(psnr(one[i][None], x[i][None])[0] - psnr(many[i][None], x[i][None])[0]) for i in range(n))
        bitwise = all(torch.equal(one[i], many[i]) for i in range(n))
        print(f"| {name} | {bitwise} | {diff:.2g} | {levels} | {dpsnr:.4f} | {time.perf_counter() - start:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
