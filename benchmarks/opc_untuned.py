"""OPC untuned against CoDPS+ (and ΠGDM) on the first test digits of the embedded prior, with
main.py itself (issue 26's measurement while the tuner and leaderboard cannot run):

    OMP_NUM_THREADS=1 python -m benchmarks.opc_untuned --num 8 --out benchmarks/results/opc_untuned

For each of the six linear MNIST tasks and each variant (OPC analytic / Type II, OPC convert /
Type II, OPC analytic / Type I at the reference's values, and OPC analytic / Type II with the
analytic r_t² at every step (``mle_sigma_thres`` 1000, above every σ_t of the schedule, instead
of ΠGDM's 1 − ᾱ above σ_t = 0.2), and OPC analytic / Type II with η = 0 (the deterministic
Euler step of the reference), and CoDPS+ with ``scale: auto`` (the exact likelihood-score weight
w_t instead of its tuned step); CoDPS+ and ΠGDM at their shipped tuned
values), one ``python main.py`` run on the first ``--num`` digits of ``samples/mnist`` (the first
test digits of data/mnist.py) at the configs' DDIM 100 steps (η = 1), seed 22, batch ``--num``.
Every image sees the same y (operator and noise draws from (seed, i)) for every variant.

Writes ``<out>.csv`` (one row per variant × task × image: PSNR, SSIM, seconds, NFE from each
run's metrics.csv) and ``<out>.md``: per task and variant the mean PSNR / SSIM with their
standard errors over images, the paired PSNR difference to CoDPS+ with its standard error, the
seconds per image and the NFE. Runs whose metrics.csv already holds ``--num`` images are reused
(``--save_dir``), so the command resumes.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import subprocess
import sys

import numpy as np

from util.image_io import atomic_write_bytes

log = logging.getLogger("opc_untuned")

TASKS = ("gaussian_deblur", "motion_deblur", "super_resolution_x2", "super_resolution_x4", "inpainting",
         "inpainting_box")
#: variant -> (method (--method; None: the task config's default, CoDPS+), overrides); the run
#: folder is <task> for the default method, else <method slug>_<task> (main.py's run_name).
VARIANTS = {
    "OPC analytic II": ("OPC", []),
    "CoDPS+ (tuned)": (None, []),
    "OPC convert II": ("OPC", ["task.conditioning.params.cov=convert"]),
    "OPC analytic II all t": ("OPC", ["task.conditioning.params.mle_sigma_thres=1000.0"]),
    "PiGDM (tuned)": ("PiGDM", []),
    "OPC analytic I": ("OPC", ["task.conditioning.params.guidance=I"]),
    "OPC analytic II eta 0": ("OPC", ["diffusion.eta=0.0"]),
    "CoDPS+ scale auto": (None, ["task.conditioning.params.scale=auto"]),
}
BASELINE = "CoDPS+ (tuned)"


def run_dir(save_dir: str, variant: str) -> str:
    """The --save_dir of one variant."""
    return os.path.join(save_dir, variant.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
                        .replace(",", ""))


def read_metrics(path: str) -> list[dict]:
    """Rows of a run's metrics.csv (status ok only)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("status") == "ok"]


def run(variant: str, task: str, num: int, save_dir: str) -> list[dict]:
    """One main.py run (skipped when its metrics.csv already has ``num`` images); its rows."""
    method, overrides = VARIANTS[variant]
    name = task if method is None else f"{method.lower()}_{task}"
    out = os.path.join(run_dir(save_dir, variant), "MNIST", "DDIM", name, "metrics.csv")
    rows = read_metrics(out)
    if len(rows) >= num:
        return rows[:num]
    cmd = [sys.executable, "main.py", "--model_config", "configs/MNIST/DDIM/model_config.yaml",
           "--diffusion_config", "configs/MNIST/DDIM/diffusion_config.yaml",
           "--task_config", f"configs/MNIST/DDIM/{task}_config.yaml", "--save_dir", run_dir(save_dir, variant),
           "--num_images", str(num), "--batch_size", str(num), "--overwrite",
           *([] if method is None else ["--method", method]), *overrides]
    log.info("%s / %s: %s", variant, task, " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return read_metrics(out)[:num]


def mean_se(v: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (ddof 1) of v."""
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def render(table: dict, num: int, command: str, tasks=TASKS) -> str:
    """The markdown results table."""
    lines = [f"# OPC untuned against CoDPS+ and ΠGDM: first {num} test digits, DDIM 100 (η = 1 unless the variant says eta 0)", "",
             "Made by", "", "```", command, "```", "",
             "Mean over images ± standard error; ΔPSNR: paired difference to CoDPS+ (tuned) on the same digits "
             "and measurements, ± its standard error. OPC at the reference's values (cov, guidance, "
             "mle_sigma_thres 0.2; no step size); CoDPS+ and ΠGDM at their shipped tuned values (ddim100). "
             "Seconds per image: wall time of the batch / images, one thread, on a machine shared with other "
             "jobs (indicative only).", ""]
    for task in tasks:
        lines += [f"## {task}", "", "| variant | PSNR (dB) | ΔPSNR vs CoDPS+ | SSIM | s / image | NFE |",
                  "|---|---|---|---|---|---|"]
        base = table.get((BASELINE, task))
        for variant in VARIANTS:
            rows = table.get((variant, task))
            if not rows:
                continue
            psnr = np.array([float(r["psnr"]) for r in rows])
            ssim = np.array([float(r["ssim"]) for r in rows])
            m, s = mean_se(psnr)
            ms, ss = mean_se(ssim)
            if base and variant != BASELINE:
                dm, ds = mean_se(psnr - np.array([float(r["psnr"]) for r in base]))
                delta = f"{dm:+.2f} ± {ds:.2f}"
            else:
                delta = "—"
            sec = np.mean([float(r["seconds"]) for r in rows])
            lines.append(f"| {variant} | {m:.2f} ± {s:.2f} | {delta} | {ms:.3f} ± {ss:.3f} | {sec:.2f} | "
                         f"{rows[0]['nfe']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.opc_untuned", description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/opc_untuned")
    p.add_argument("--save_dir", default="results/opc_untuned")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    p.add_argument("--tasks", default=",".join(TASKS), help="comma list of " + ", ".join(TASKS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [v for v in variants if v not in VARIANTS] + [t for t in tasks if t not in TASKS]
    if bad or args.num < 2:
        print(f"error: --variants / --tasks {bad} unknown (valid: {', '.join(VARIANTS)}; {', '.join(TASKS)}) "
              f"or --num < 2", file=sys.stderr)
        return 2
    table = {}
    for variant in variants:      # variant-major: the no-backprop comparison finishes first
        for task in tasks:
            table[(variant, task)] = run(variant, task, args.num, args.save_dir)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "task", "image", "psnr", "ssim", "seconds", "nfe"])
    for (variant, task), rows in table.items():
        for r in rows:
            w.writerow([variant, task, r["image"], r["psnr"], r["ssim"], r["seconds"], r["nfe"]])
    atomic_write_bytes(args.out + ".csv", buf.getvalue().encode())
    command = "OMP_NUM_THREADS=1 python -m benchmarks.opc_untuned " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v != p.get_default(k))
    atomic_write_bytes(args.out + ".md", render(table, args.num, command.strip(), tasks).encode())
    log.info("wrote %s.csv and %s.md", args.out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
