"""Small hyperparameter sweep of the embedded MNIST configurations on the TUNE split only:
for each task and method, mean PSNR / SSIM of the first ``--num`` tune digits for each value of
``scale`` (RED-diff: λ, DAPS: τ; the other parameters as committed). ``--apply`` writes the best scale (by PSNR) into
configs/MNIST/<DDIM|DDPM>/[dps_]<task>_config.yaml.

    pip install -r requirements-train.txt
    python -m benchmarks.mnist_sweep --num 4 --apply

Writes <out>.csv and <out>.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys

import numpy as np
import torch

from benchmarks.mnist_common import METHODS, TASKS, config_path, digits, measure, restore, scores, task_config
from util.image_io import atomic_write_bytes, write_csv

GRID = {"CoDPS+": (0.02, 0.05, 0.1, 0.2), "CoDPS": (0.02, 0.05, 0.1), "DPS": (0.3, 1.0),
        "RED-diff": (0.05, 0.25, 1.25), "DAPS": (0.01, 0.03, 0.1), "TMPD": (0.3, 1.0, 3.0)}
#: The parameter swept per method (default ``scale``): RED-diff's λ, DAPS's τ.
PARAM = {"RED-diff": "grad_term_weight", "DAPS": "tau"}


def apply_scale(method: str, task: str, scale: float) -> str:
    """Rewrite the swept parameter's line (``scale:``, or :data:`PARAM`'s) of ``method``'s task
    config; returns the path."""
    sampling, prefix = METHODS[method]
    key = PARAM.get(method, "scale")
    path = config_path(sampling, f"{prefix}{task}_config")
    with open(path) as f:
        text = f.read()
    new, n = re.subn(rf"(?m)^(\s+{key}:\s*)[^\s#]+", lambda mt: f"{mt.group(1)}{scale:g}", text, count=1)
    if n != 1:
        raise ValueError(f"{path}: no '{key}:' entry to rewrite")
    atomic_write_bytes(path, new.encode())
    return path


def main(argv=None) -> int:
    """Run the sweep; returns 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=4, help="first N tune digits")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default=",".join(GRID))
    p.add_argument("--values", default=None, help="comma-separated values of the swept parameter, replacing "
                   "GRID for every method given (e.g. to extend a grid whose best value was on its edge)")
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--apply", action="store_true", help="write the best scale into the committed configs")
    p.add_argument("--out", default="benchmarks/results/mnist_sweep")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    x, idx = digits("tune", a.num)
    rows, best = [], {}
    for task in a.tasks.split(","):
        m = measure(task_config("CoDPS+", task), x, idx, a.seed)
        for method in a.methods.split(","):
            for scale in (tuple(float(v) for v in a.values.split(",")) if a.values else GRID[method]):
                rec, sec, nfe = restore(method, task, m, idx, a.seed, params={PARAM.get(method, "scale"): scale})
                ps, ss = scores(rec, x)
                rows.append(dict(task=task, method=method, scale=scale, psnr=f"{np.mean(ps):.3f}",
                                 ssim=f"{np.mean(ss):.4f}", seconds=f"{sec:.3f}", nfe=nfe))
                print(f"{task:20s} {method:7s} scale {scale:<6g} PSNR {np.mean(ps):6.2f} SSIM {np.mean(ss):.3f}",
                      flush=True)
            sel = [r for r in rows if r["task"] == task and r["method"] == method]
            best[(task, method)] = max(sel, key=lambda r: float(r["psnr"]))["scale"]
            if a.apply:
                apply_scale(method, task, best[(task, method)])
            write(a, rows, best)
    return 0


def write(a, rows, best) -> None:
    """Write the CSV and markdown (atomically)."""
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    write_csv(a.out + ".csv", list(rows[0]), rows)
    lines = [f"Scale sweep on the first {a.num} MNIST tune digits (seed {a.seed}); other parameters as committed. "
             f"Mean PSNR (dB) / SSIM; chosen = best PSNR. Command: "
             f"`python -m benchmarks.mnist_sweep {' '.join(a.argv)}`.", "",
             "| task | method | " + " | ".join(f"scale {i + 1}" for i in range(max(len(g) for g in GRID.values())))
             + " | chosen |", "|---|---|" + "---|" * (max(len(g) for g in GRID.values()) + 1)]
    for (task, method), chosen in best.items():
        sel = [r for r in rows if r["task"] == task and r["method"] == method]
        cells = [f"{r['scale']}: {float(r['psnr']):.2f} / {float(r['ssim']):.3f}" for r in sel]
        cells += [""] * (max(len(g) for g in GRID.values()) - len(cells))
        lines.append(f"| {task} | {method} | " + " | ".join(cells) + f" | {chosen} |")
    atomic_write_bytes(a.out + ".md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    raise SystemExit(main())
