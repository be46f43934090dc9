"""An 8×8 grid of unconditional samples from the embedded prior (DDIM 100, configs/MNIST/DDIM),
seeded per sample like the CLI, written to samples/mnist_prior_grid.png.

    python -m benchmarks.sample_grid
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.mnist_common import config_path, load_prior
from builder import build_sampler
from sampling import sample
from solvers import get_solver
from util.config import load_yaml
from util.image_io import save_png
from util.seeding import STREAM_SAMPLER, randn, torch_generators


def main(argv=None) -> int:
    """Sample and write the grid; returns 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples/mnist_prior_grid.png")
    a = p.parse_args(argv)
    n = a.rows * a.rows
    sampler = build_sampler(load_yaml(config_path("DDIM", "diffusion_config")))
    gens = torch_generators(a.seed, range(n), STREAM_SAMPLER)
    res = sample(load_prior(), sampler, randn((1, 32, 32), gens), None, get_solver("none"), None, gens)
    imgs = ((res.x0.clamp(-1, 1) + 1) / 2).squeeze(1).numpy()          # (n, 32, 32) in [0, 1]
    pad = np.ones((n, 34, 34), dtype=np.float32)
    pad[:, 1:33, 1:33] = imgs
    grid = pad.reshape(a.rows, a.rows, 34, 34).transpose(0, 2, 1, 3).reshape(a.rows * 34, a.rows * 34)
    save_png(a.out, torch.from_numpy(grid)[None])
    print(f"wrote {a.out} ({n} samples, NFE {res.nfe})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
