"""Sweep of the time grid (``conditioning.time_grid``) of a method on the MNIST tune digits: the
uniform DDIM grid (``ddim<N>``) against the low-noise family ``sigma<N>max<S>`` for several
σ_max, at one NFE budget, with the method's config parameters (optionally crossed with a few
values of other parameters). One JSON line per run on stdout and in ``--out``.

Example (8 tune digits, 100 NFE, DDRM Gaussian deblurring):

    OMP_NUM_THREADS=1 python -m benchmarks.time_grid --method DDRM --task gaussian_deblur \\
        --sigma_max 1 2 3 5 --param eta=0.85,1
"""
from __future__ import annotations

import argparse
import json
import sys

from benchmarks.evaluate import mean_se, method_params, run_method, select


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; returns 0 (2 on bad arguments)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--budget", type=int, default=100, help="NFE per image (one call per step)")
    p.add_argument("--sigma_max", type=float, nargs="*", default=[1, 2, 3, 5])
    p.add_argument("--param", action="append", default=[], help="name=v1,v2 (crossed with the grids)")
    p.add_argument("--split", default="tune")
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--no_uniform", action="store_true", help="skip the uniform ddim<budget> run")
    p.add_argument("--out", default=None, help="append JSON lines here too")
    a = p.parse_args(argv)
    try:
        specs, _, _ = select(a.method, a.task)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = specs[a.method]
    base = method_params(spec, a.task, f"ddim{a.budget}")
    combos = [{}]
    for item in a.param:
        name, values = item.split("=", 1)
        combos = [{**c, name: (v if v == "auto" else float(v))} for c in combos for v in values.split(",")]
    grids = [f"ddim{a.budget}"] * (not a.no_uniform) + [f"sigma{a.budget}max{s:g}" for s in a.sigma_max]
    for combo in combos:
        for respacing in grids:
            params = {**base, **combo}
            s = run_method(spec, a.task, params, respacing, a.split, a.num, a.seed)
            m, se = mean_se(s.psnr)
            rec = dict(method=spec.name, task=a.task, respacing=respacing, params=params, split=a.split, num=a.num,
                       seed=a.seed, psnr=round(m, 3), se=round(se, 3), ssim=round(mean_se(s.ssim)[0], 4), nfe=s.nfe,
                       psnrs=[round(v, 3) for v in s.psnr], ssims=[round(v, 4) for v in s.ssim])
            line = json.dumps(rec)
            print(line, flush=True)
            if a.out:
                with open(a.out, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
