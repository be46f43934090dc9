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

from benchmarks.evaluate import diffusion_config, discover, measurement_config, method_params, respacing_for
from benchmarks.mnist_common import ROOT, digits, load_prior
from builder import build_physics, build_sampler, build_solver
from restore import restore
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
    specs, model = discover(), load_prior()
    for method in args.methods.split(","):
        spec = specs[method]
        for task in TASKS:
            respacing = respacing_for(spec, args.budget, {}, task)
            shipped = method_params(spec, task, respacing)          # main.py's values at this budget
            physics = build_physics(measurement_config(task))
            dcfg = diffusion_config(spec)
            dcfg["timestep_respacing"] = respacing
            sampler = build_sampler(dcfg)
            for scale in sorted({float(shipped["scale"]), 1.0}):
                for guard in (False, True):
                    solver = build_solver({"method": method, "params": {**shipped, "scale": scale, "abs_var": guard}})
                    res = restore(model, sampler, physics, solver, idx, args.seed, x=x)   # y from (seed, i) draws
                    rec = res.x0
                    amax = float(rec.abs().max())
                    frac = float((rec.abs() > 1.05).float().mean())
                    rows.append(dict(method=method, task=task, budget=args.budget, num=args.num, scale=scale,
                                     abs_var=guard, max_abs_x=f"{amax:.4g}", frac_out_1_05=f"{frac:.4f}",
                                     psnr_clip=f"{float(np.mean(res.psnr)):.3f}",
                                     psnr_noclip=f"{psnr_noclip(rec, x):.3f}", seconds_per_image=f"{res.seconds:.3f}"))
                    print(rows[-1], flush=True)
    write_csv(args.out, list(rows[0]), rows)


if __name__ == "__main__":
    main()
