"""How far the embedded prior's Tweedie covariance is from symmetric positive definite (issue 21):
for a few tune digits at DDIM-100 times t (x_t = √ᾱ x + √(1−ᾱ) ε), the fraction of negative row
sums of A Jᵀ Aᵀ (what TMPD's row-sum variance sees) for Gaussian deblurring and ×4 SR, and, for
×4 SR (m = 64), the dense M = A Jᵀ Aᵀ: asymmetry ‖M − Mᵀ‖_F / ‖M‖_F, the fraction of eigenvalues
of M with negative real part, and of negative diagonal entries of C_y = σ² I + (1−ᾱ)/√ᾱ · M.

    python -m benchmarks.jacobian_stats [--num 4] [--out benchmarks/results/jacobian_stats.csv]
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from benchmarks.evaluate import measurement_config
from benchmarks.mnist_common import ROOT, digits, load_prior
from builder import build_physics
from restore import measure
from guided_diffusion.gaussian_diffusion import create_sampler
from util.config import load_yaml
from util.image_io import write_csv

T_INDICES = (99, 90, 50, 10)      # DDIM 100 grid positions (99 = x_T)


def main() -> None:
    """Write one row per (digit, t)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "jacobian_stats.csv"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_prior()
    diff = create_sampler(**{**load_yaml(os.path.join(ROOT, "configs", "MNIST", "DDIM", "diffusion_config.yaml")),
                             "timestep_respacing": "ddim100", "clip_denoised": True})
    x, idx = digits("tune", args.num)
    phys = {}
    for task in ("gaussian_deblur", "super_resolution_x4"):
        phys[task] = build_physics(measurement_config(task))
        measure(phys[task], x, idx, 22)          # draws the operator for these digits, as a run does
    rows = []
    for ti in T_INDICES:
        tb = torch.full((args.num,), ti, dtype=torch.long)
        ab = diff.alpha_bar(tb).double()
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(ti))
        x_t = (ab.sqrt().reshape(-1, 1, 1, 1) * x + (1 - ab).sqrt().reshape(-1, 1, 1, 1) * eps).float()
        x_t.requires_grad_(True)
        x0_hat = diff.p_mean_variance(model, x_t, tb)["pred_xstart"]
        ratio = ((1 - ab) / ab.sqrt()).numpy()
        neg = {}
        for task, p in phys.items():
            ones = torch.ones_like(p.A(x0_hat.detach()))
            (u,) = torch.autograd.grad(x0_hat, x_t, p.A_T(ones), retain_graph=True)
            neg[task] = (p.A(u) < 0).flatten(1).float().mean(1).numpy()
        p = phys["super_resolution_x4"]
        m = p.A(x0_hat.detach())[0].numel()
        cols = []
        for k in range(m):
            e = torch.zeros(args.num, m)
            e[:, k] = 1
            (u,) = torch.autograd.grad(x0_hat, x_t, p.A_T(e.reshape(args.num, 1, 8, 8)), retain_graph=True)
            cols.append(p.A(u).reshape(args.num, m))
        M = torch.stack(cols, 2).double().numpy()                 # column k = A Jᵀ Aᵀ e_k
        for n in range(args.num):
            ev = np.linalg.eigvals(M[n])
            cy = p.sigma_n ** 2 + ratio[n] * np.diag(M[n])
            rows.append(dict(digit=idx[n], t_index=ti, t=int(diff.timestep_map[ti]) if hasattr(diff, "timestep_map") else ti,
                             alpha_bar=f"{float(ab[n]):.4g}",
                             neg_rowsum_deblur=f"{neg['gaussian_deblur'][n]:.3f}",
                             neg_rowsum_sr4=f"{neg['super_resolution_x4'][n]:.3f}",
                             asym_sr4=f"{np.linalg.norm(M[n] - M[n].T) / np.linalg.norm(M[n]):.3f}",
                             neg_eig_sr4=f"{float((ev.real < 0).mean()):.3f}",
                             neg_diag_cy_sr4=f"{float((cy <= 0).mean()):.3f}"))
            print(rows[-1], flush=True)
    write_csv(args.out, list(rows[0]), rows)


if __name__ == "__main__":
    main()
