"""Small hyperparameter sweep of the embedded MNIST configurations on the TUNE split only:
for each task and method, mean PSNR / SSIM of the first ``--num`` tune digits for each value of
the method's swept parameter (``GRID``: ``scale`` for CoDPS / CoDPS+ / DPS, ``eta`` for DDRM and
DDNM, ``lam`` for DiffPIR; the other parameters as committed). ``--apply`` writes the best value
(by PSNR) into configs/MNIST/<DDIM|DDPM>/<prefix><task>_config.yaml.

    pip install -r requirements-train.txt
    python -m benchmarks.mnist_sweep --num 4 --apply
    python -m benchmarks.mnist_sweep --num 8 --methods DiffPIR --param zeta=0.1,0.3,0.6,1.0

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

#: method -> (swept parameter, values): log-spaced grids.
GRID = {"CoDPS+": ("scale", (0.02, 0.05, 0.1, 0.2)), "CoDPS": ("scale", (0.02, 0.05, 0.1)),
        "DPS": ("scale", (0.3, 1.0)), "DDRM": ("eta", (0.25, 0.5, 0.85, 1.0)),
        "DDNM": ("eta", (0.25, 0.5, 0.85, 1.0)), "DiffPIR": ("lam", (0.5, 2.0, 7.0, 28.0)),
        "RED-diff": ("grad_term_weight", (0.05, 0.25, 1.25)), "DAPS": ("tau", (0.01, 0.03, 0.1)),
        "TMPD": ("scale", (0.3, 1.0, 3.0))}


def apply_param(method: str, task: str, value: float, param: str = "scale") -> str:
    """Rewrite the ``<param>:`` line of ``method``'s task config; returns the path. Raises
    ValueError when the config has no such line."""
    sampling, prefix = METHODS[method]
    path = config_path(sampling, f"{prefix}{task}_config")
    with open(path) as f:
        text = f.read()
    new, n = re.subn(rf"(?m)^(\s+{re.escape(param)}:\s*)[^\s#]+", lambda mt: f"{mt.group(1)}{value:g}", text, count=1)
    if n != 1:
        raise ValueError(f"{path}: no '{param}:' entry to rewrite")
    atomic_write_bytes(path, new.encode())
    return path


def apply_scale(method: str, task: str, scale: float) -> str:
    """Rewrite the ``scale:`` line of ``method``'s task config (:func:`apply_param`)."""
    return apply_param(method, task, scale, "scale")


def main(argv=None) -> int:
    """Run the sweep; returns 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=4, help="first N tune digits")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default=",".join(GRID))
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--param", default="", help="NAME=v1,v2,... : sweep this parameter instead of GRID's")
    p.add_argument("--values", default=None, help="comma-separated values of each method's GRID parameter, "
                   "replacing GRID's values (e.g. to extend a grid whose best value was on its edge)")
    p.add_argument("--apply", action="store_true", help="write the best value into the committed configs")
    p.add_argument("--out", default="benchmarks/results/mnist_sweep")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    x, idx = digits("tune", a.num)
    grid = dict(GRID)
    if a.param:
        name, _, values = a.param.partition("=")
        try:
            vals = tuple(float(v) for v in values.split(","))
        except ValueError:
            p.error(f"--param must be NAME=v1,v2,..., got {a.param!r}")
        grid = {mt: (name, vals) for mt in a.methods.split(",")}
    if a.values and not a.param:
        try:
            vals = tuple(float(v) for v in a.values.split(","))
        except ValueError:
            p.error(f"--values must be v1,v2,..., got {a.values!r}")
        grid = {mt: (grid[mt][0], vals) for mt in a.methods.split(",") if mt in grid}
    bad = [mt for mt in a.methods.split(",") if mt not in grid or mt not in METHODS]
    if bad:
        p.error(f"no sweep grid or config for method(s) {', '.join(bad)}; valid: {', '.join(g for g in GRID if g in METHODS)}")
    a.grid = grid
    rows, best = [], {}
    for task in a.tasks.split(","):
        m = measure(task_config("CoDPS+", task), x, idx, a.seed)
        for method in a.methods.split(","):
            param, values = grid[method]
            for value in values:
                rec, sec, nfe = restore(method, task, m, idx, a.seed, params={param: value})
                ps, ss = scores(rec, x)
                rows.append(dict(task=task, method=method, param=param, value=value, psnr=f"{np.mean(ps):.3f}",
                                 ssim=f"{np.mean(ss):.4f}", seconds=f"{sec:.3f}", nfe=nfe))
                print(f"{task:20s} {method:7s} {param} {value:<6g} PSNR {np.mean(ps):6.2f} SSIM {np.mean(ss):.3f}",
                      flush=True)
            sel = [r for r in rows if r["task"] == task and r["method"] == method]
            best[(task, method)] = max(sel, key=lambda r: float(r["psnr"]))["value"]
            if a.apply:
                apply_param(method, task, best[(task, method)], param)
            write(a, rows, best)
    return 0


def write(a, rows, best) -> None:
    """Write the CSV and markdown (atomically)."""
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    write_csv(a.out + ".csv", list(rows[0]), rows)
    width = max(len(v) for _, v in a.grid.values())
    lines = [f"Parameter sweep on the first {a.num} MNIST tune digits (seed {a.seed}); other parameters as committed. "
             f"Mean PSNR (dB) / SSIM; chosen = best PSNR. Command: "
             f"`python -m benchmarks.mnist_sweep {' '.join(a.argv)}`.", "",
             "| task | method | param | " + " | ".join(f"value {i + 1}" for i in range(width))
             + " | chosen |", "|---|---|---|" + "---|" * (width + 1)]
    for (task, method), chosen in best.items():
        sel = [r for r in rows if r["task"] == task and r["method"] == method]
        cells = [f"{r['value']:g}: {float(r['psnr']):.2f} / {float(r['ssim']):.3f}" for r in sel]
        cells += [""] * (width - len(cells))
        lines.append(f"| {task} | {method} | {sel[0]['param']} | " + " | ".join(cells) + f" | {chosen:g} |")
    atomic_write_bytes(a.out + ".md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    raise SystemExit(main())
