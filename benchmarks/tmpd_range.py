"""Range check of TMPD's reconstructions without the final clip (issue 21, item 2): for a few
MNIST tune digits and tasks, max |x| of the returned sample (the loop does not clip it; the
metrics do), PSNR with and without clipping to [-1, 1], for the variance guard off (the
reference) and on (``abs_var``), at the committed ζ and at ζ = 1 (the paper's).

    python -m benchmarks.tmpd_range [--num 4] [--budget 100] [--methods TMPD] [--out benchmarks/results/tmpd_range.csv]
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from benchmarks.mnist_common import ROOT, digits, measure, scores, task_config
from util.image_io import write_csv

TASKS = ("gaussian_deblur", "super_resolution_x4", "inpainting")


def psnr_noclip(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean PSNR (dB) of (x + 1) / 2 against (ref + 1) / 2 over the batch, x NOT clipped (peak 1)."""
    mse = (((x - ref) / 2) ** 2).flatten(1).mean(1).clamp(min=1e-20)
    return float((10 * torch.log10(1 / mse)).mean())


def main() -> None:
    """Run the grid and write one CSV row per (method, task, ζ, guard)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=4)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--methods", default="TMPD")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "tmpd_range.csv"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, idx = digits("tune", args.num)
    rows = []
    for method in args.methods.split(","):
        for task in TASKS:
            m = measure(task_config(method, task), x, idx, args.seed)
            cfg = task_config(method, task)["conditioning"]
            tuned = (cfg.get("tuned") or {}).get(f"ddim{args.budget}", {}).get("scale", cfg["params"]["scale"])
            for scale in sorted({float(tuned), 1.0}):
                for guard in (False, True):
                    params = {"scale": scale, "abs_var": guard}
                    rec, sec, nfe = _restore_at(method, task, m, idx, args.seed, params, args.budget)
                    amax = float(rec.abs().max())
                    frac = float((rec.abs() > 1.05).float().mean())
                    rows.append(dict(method=method, task=task, budget=args.budget, num=args.num, scale=scale,
                                     abs_var=guard, max_abs_x=f"{amax:.4g}", frac_out_1_05=f"{frac:.4f}",
                                     psnr_clip=f"{float(np.mean(scores(rec, x)[0])):.3f}",
                                     psnr_noclip=f"{psnr_noclip(rec, x):.3f}", seconds_per_image=f"{sec:.3f}"))
                    print(rows[-1], flush=True)
    write_csv(args.out, list(rows[0]), rows)


def _restore_at(method, task, m, idx, seed, params, budget):
    """restore() at ``budget`` DDIM steps (the committed config is at 100)."""
    from benchmarks import mnist_common
    from guided_diffusion.respace import grid_respacing
    from builder import build_sampler, build_solver
    from sampling import sample
    from util.config import load_yaml
    from util.seeding import STREAM_SAMPLER, randn, torch_generators
    import time
    cfg = task_config(method, task)
    cond = dict(cfg["conditioning"])
    cond["params"] = {**(cond.get("params") or {}), **params}
    cond.pop("tuned", None)
    solver = build_solver(cond, m.physics)
    dcfg = load_yaml(mnist_common.config_path(mnist_common.METHODS[method][0], "diffusion_config"))
    dcfg["timestep_respacing"] = grid_respacing(f"ddim{budget}", cond.get("time_grid"))
    sampler = build_sampler(dcfg)
    gens = torch_generators(seed, idx, STREAM_SAMPLER)
    t0 = time.perf_counter()
    res = sample(mnist_common.load_prior(), sampler, randn(m.x.shape[1:], gens), m.y, solver, m.physics, gens,
                 progress=False)
    return res.x0, (time.perf_counter() - t0) / len(idx), res.nfe


if __name__ == "__main__":
    main()
