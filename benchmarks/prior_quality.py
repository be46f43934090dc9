"""Sample quality of MNIST diffusion priors (issue 16): unconditional samples of each checkpoint,
scored by the digit classifier of :mod:`util.digit_classifier`, side by side.

    python -m benchmarks.prior_quality --ckpt ckpts/mnist32.pt --label "old, 1,249 steps" \\
        --ckpt runs/mnist32_long/ema.pt --label "new" --num 1000

For every checkpoint: ``--num`` samples of the DDIM 100 configuration (configs/MNIST/DDIM/
diffusion_config.yaml, η = 1), sample i seeded by (``--seed``, i) like the CLI, so a sample does
not depend on the batch size. Figures (images mapped to [0, 255] by (x + 1) / 2 clipped):

- confident: fraction whose most probable class has probability ≥ 0.9;
- class histogram of the most probable class, its total-variation distance to uniform
  (½ Σ_k |p_k − 1/10|) and the χ² test p-value against uniform (scipy.stats.chisquare);
- black background: fraction whose border (the 2-pixel frame, zero in every padded MNIST digit)
  has mean < 20 / 255;
- FD: Fréchet distance of the classifier's penultimate features to the 250 test digits; its
  floor is the FD of ``--num`` train digits (seeded choice) to the same test digits (equal set
  sizes, so the sample-size bias is the same), and of all 4,500 train digits.

The real test digits are scored the same way as a reference column. Writes ``--out`` (markdown),
the same figures as JSON next to it, and an 8×8 grid of the first 64 samples of each checkpoint
(``<out stem>_<k>.png``). ``--keep`` keeps the columns of an earlier run (from the JSON) whose
labels are not re-run, so an old checkpoint need not stay on disk to be compared.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time

import numpy as np
import scipy.stats
import torch

from benchmarks.mnist_common import ROOT, config_path
from builder import build_model, build_sampler
from restore import restore
from solvers import get_solver
from util.config import ConfigError, load_yaml
from util.digit_classifier import (DEFAULT_PATH, frechet_distance, load_classifier, penultimate_features,
                                   predict_proba)
from util.image_io import atomic_write_bytes, save_png

log = logging.getLogger("prior_quality")

CONFIDENCE = 0.9
BORDER = 2
BLACK_LEVEL = 20.0        # border mean below this (0..255) counts as a black background


def border_mean(x: torch.Tensor, width: int = BORDER) -> np.ndarray:
    """Mean of the outer ``width``-pixel frame of images x (N, 1, H, W) in [-1, 1], on the
    0..255 scale ((x + 1) / 2 clipped, × 255), float64 (N,)."""
    u = ((x.double() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0
    mask = torch.ones(x.shape[-2:], dtype=torch.bool)
    mask[width:-width, width:-width] = False
    return u[..., mask].mean(dim=(1, 2)).numpy()


def score(x: torch.Tensor, clf, test_feats: np.ndarray) -> dict:
    """Figures of images x (N, 1, 32, 32) in [-1, 1] (see the module docstring)."""
    p = predict_proba(clf, x)
    pred = p.argmax(1)
    counts = np.bincount(pred, minlength=10)
    freq = counts / counts.sum()
    feats = penultimate_features(clf, x)
    return {
        "num": int(x.shape[0]),
        "confident": float((p.max(1) >= CONFIDENCE).mean()),
        "black_background": float((border_mean(x) < BLACK_LEVEL).mean()),
        "border_mean": float(border_mean(x).mean()),
        "class_counts": counts.tolist(),
        "tv_uniform": float(0.5 * np.abs(freq - 0.1).sum()),
        "chi2_p": float(scipy.stats.chisquare(counts).pvalue),
        "fd_test": frechet_distance(feats, test_feats),
    }


def sample_prior(model, diffusion_cfg: dict, num: int, seed: int, batch: int, shape=(1, 32, 32)) -> torch.Tensor:
    """``num`` unconditional samples (num, *shape) in [-1, 1]; sample i seeded by (seed, i)."""
    sampler = build_sampler(diffusion_cfg)
    solver = get_solver("none")
    out = []
    for start in range(0, num, batch):
        idx = range(start, min(num, start + batch))
        res = restore(model, sampler, None, solver, list(idx), seed, image_shape=shape)   # unconditional
        out.append(res.x0.clamp(-1, 1).float().cpu())
        log.info("sampled %d / %d", idx[-1] + 1, num)
    return torch.cat(out)


def grid_png(path: str, x: torch.Tensor, rows: int = 8) -> None:
    """Save the first rows² images of x (N, 1, 32, 32) in [-1, 1] as a grid with 1-pixel white lines."""
    n = rows * rows
    imgs = ((x[:n, 0] + 1) / 2).clamp(0, 1).numpy()
    if len(imgs) < n:
        imgs = np.concatenate([imgs, np.zeros((n - len(imgs), 32, 32), dtype=imgs.dtype)])
    pad = np.ones((n, 34, 34), dtype=np.float32)
    pad[:, 1:33, 1:33] = imgs
    grid = pad.reshape(rows, rows, 34, 34).transpose(0, 2, 1, 3).reshape(rows * 34, rows * 34)
    save_png(path, torch.from_numpy(grid)[None])


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fmt(v, kind):
    if v is None:
        return "—"
    if kind == "pct":
        return f"{100 * v:.1f} %"
    if kind == "f3":
        return f"{v:.3f}"
    if kind == "p":
        return f"{v:.2g}"
    return str(v)


def render(result: dict) -> str:
    """The markdown page of a result dict (see :func:`main`)."""
    cols = result["columns"]
    ref = result["reference"]
    heads = [c["label"] for c in cols] + ["test digits (reference)"]
    rows = [("samples", "num", "int"), (f"confident (max p ≥ {CONFIDENCE})", "confident", "pct"),
            (f"black background (border mean < {BLACK_LEVEL:g}/255)", "black_background", "pct"),
            ("mean border value (0..255)", "border_mean", "f3"),
            ("class histogram: TV distance to uniform", "tv_uniform", "f3"),
            ("class histogram: χ² p-value vs uniform", "chi2_p", "p"),
            ("Fréchet distance to the test digits", "fd_test", "f3")]
    lines = ["# Sample quality of the MNIST prior", "",
             f"Generated by `{result['command']}`.", "",
             f"Unconditional samples, {result['sampler']}, sample i seeded by (seed {result['seed']}, i); "
             "scored by `util/digit_classifier.py` (`ckpts/mnist_classifier.pt`, trained on the train split "
             f"only, test accuracy {100 * ref['accuracy']:.1f} %). Fréchet distance (FD) on its "
             f"{result['feature_dim']}-d penultimate features.", "",
             "| | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for name, key, kind in rows:
        vals = [c.get(key) for c in cols] + [ref.get(key)]
        lines.append(f"| {name} | " + " | ".join(_fmt(v, kind) for v in vals) + " |")
    for k in range(10):
        vals = [c["class_counts"][k] for c in cols] + [ref["class_counts"][k]]
        lines.append(f"| class {k} | " + " | ".join(str(v) for v in vals) + " |")
    lines.append("| sampling time (s, threads) | " + " | ".join(
        f"{c['seconds']:.0f} ({c['threads']})" for c in cols) + " | — |")
    lines += ["", f"FD floor (real digits vs the test digits): {result['floor_num']} train digits (seeded "
              f"choice, the samples' set size): **{result['fd_floor']:.3f}**; all 4,500 train digits: "
              f"{result['fd_floor_all']:.3f}. (The reference column's FD is the test digits against "
              "themselves, 0.)", "",
              "Checkpoints:", ""]
    for k, c in enumerate(cols):
        lines.append(f"- {c['label']}: `{c['ckpt']}` (sha256 {c['sha256'][:12]}), grid `{c['grid']}`")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """CLI; returns the exit status (2 for bad input with one `error:` line)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", action="append", help="EMA state_dict of the prior (repeatable); "
                   "default ckpts/mnist32.pt")
    p.add_argument("--label", action="append", help="column label for each --ckpt (default: the path)")
    p.add_argument("--num", type=int, default=1000, help="samples per checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-config", default=config_path("DDPM", "model_config"))
    p.add_argument("--diffusion-config", default=config_path("DDIM", "diffusion_config"))
    p.add_argument("--steps", default="", help="override timestep_respacing (e.g. ddim10)")
    p.add_argument("--classifier", default=DEFAULT_PATH)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "prior_quality.md"),
                   help="the Markdown file (its .json and _<k>.png grids go next to it); an existing folder "
                        "means <folder>/prior_quality.md")
    p.add_argument("--keep", action="store_true", help="keep earlier columns (from the JSON) not re-run")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 samples, ddim5")
    a = p.parse_args(argv)
    if os.path.isdir(a.out):
        a.out = os.path.join(a.out, "prior_quality.md")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(a.threads)
    if a.quick:
        a.num, a.steps = 8, a.steps or "ddim5"
    ckpts = a.ckpt or [os.path.join(ROOT, "ckpts", "mnist32.pt")]
    labels = a.label or []
    try:
        if len(labels) > len(ckpts):
            raise ValueError(f"--label given {len(labels)} times for {len(ckpts)} --ckpt")
        labels = labels + [os.path.relpath(c, ROOT) for c in ckpts[len(labels):]]
        if a.num < 2:
            raise ValueError(f"--num must be at least 2, got {a.num}")
        for c in ckpts:
            if not os.path.isfile(c):
                raise FileNotFoundError(f"--ckpt {c!r} does not exist")
        model_cfg = load_yaml(a.model_config)
        diff_cfg = load_yaml(a.diffusion_config)
        if a.steps:
            diff_cfg["timestep_respacing"] = a.steps
        shape = (int(model_cfg.get("in_channels", 1)), int(model_cfg["image_size"]), int(model_cfg["image_size"]))
        if shape != (1, 32, 32):
            raise ValueError(f"--model-config {a.model_config!r}: images are {shape}; the digit classifier needs (1, 32, 32)")
        clf = load_classifier(a.classifier)
        from data.mnist import load_mnist32, to_model_range
        test_imgs, test_labels = load_mnist32("test")
        train_imgs, _ = load_mnist32("train")
        x_test = torch.from_numpy(to_model_range(test_imgs))
        x_train = torch.from_numpy(to_model_range(train_imgs))
        test_feats = penultimate_features(clf, x_test)
        train_feats = penultimate_features(clf, x_train)
        pick = np.random.default_rng(a.seed).choice(len(x_train), size=min(a.num, len(x_train)), replace=False)
        reference = score(x_test, clf, test_feats)
        reference["accuracy"] = float((predict_proba(clf, x_test).argmax(1) == test_labels).mean())
        json_path = os.path.splitext(a.out)[0] + ".json"
        stem = os.path.splitext(a.out)[0]
        old_cols = []
        if a.keep and os.path.isfile(json_path):
            with open(json_path, encoding="utf-8") as f:
                old_cols = [c for c in json.load(f)["columns"] if c["label"] not in labels]
        cols = []
        for k, (ck, label) in enumerate(zip(ckpts, labels)):
            model = build_model({**model_cfg, "model_path": ck}, "cpu")
            t0 = time.perf_counter()
            x = sample_prior(model, diff_cfg, a.num, a.seed, a.batch, shape)
            seconds = time.perf_counter() - t0
            col = {"label": label, "ckpt": os.path.relpath(os.path.abspath(ck), ROOT), "sha256": _sha256(ck),
                   "seconds": seconds, "threads": a.threads, **score(x, clf, test_feats)}
            grid = f"{stem}_{len(old_cols) + k}.png"
            grid_png(grid, x)
            col["grid"] = os.path.relpath(os.path.abspath(grid), ROOT)
            cols.append(col)
            log.info("%s: confident %.3f, black background %.3f, FD %.3f", label, col["confident"],
                     col["black_background"], col["fd_test"])
    except (FileNotFoundError, ValueError, ConfigError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cmd = "python -m benchmarks.prior_quality " + " ".join(
        f'"{x}"' if " " in x else x for x in (argv if argv is not None else sys.argv[1:]))
    result = {"command": cmd, "sampler": f"{diff_cfg.get('sampler')} {diff_cfg.get('timestep_respacing')} "
              f"(eta {diff_cfg.get('eta')})", "seed": a.seed, "feature_dim": int(test_feats.shape[1]),
              "columns": old_cols + cols, "reference": reference, "floor_num": int(len(pick)),
              "fd_floor": frechet_distance(train_feats[pick], test_feats),
              "fd_floor_all": frechet_distance(train_feats, test_feats)}
    atomic_write_bytes(json_path, json.dumps(result, indent=1).encode("utf-8"))
    atomic_write_bytes(a.out, render(result).encode("utf-8"))
    print(f"wrote {a.out} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
