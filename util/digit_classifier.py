"""A small MNIST digit classifier for measuring images, not for restoring them: the prior's
unconditional samples (benchmarks/prior_quality.py) and restorations (the leaderboard) are scored
by its class probabilities, and sets of images are compared by a Fréchet distance on its
penultimate features (the FID recipe of Heusel et al. 2017, eq. 6, with this network in place of
Inception).

The network (:class:`DigitClassifier`, 0.1 M parameters, ``ckpts/mnist_classifier.pt`` ≈ 0.4 MB)
is trained on the 4,500 train digits of :mod:`data.mnist` only (the tune and test digits are never
seen), with random shifts of up to 2 pixels; see :func:`train_classifier` and the CLI::

    python -m util.digit_classifier --train            # writes ckpts/mnist_classifier.pt
    python -m util.digit_classifier                    # test accuracy of the committed file

API (images are float (N, 1, 32, 32) in [-1, 1], 0 = mid-grey, -1 = the black MNIST background)::

    clf = load_classifier()                  # eval mode, CPU, weights_only loading
    p = predict_proba(clf, x)                # (N, 10) float64, rows sum to 1
    f = penultimate_features(clf, x)         # (N, FEATURE_DIM) float64
    d = frechet_distance(f_a, f_b)           # float, >= 0

All three are deterministic and independent of the batch size (no batch statistics, no dropout).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The committed weights.
DEFAULT_PATH = os.path.join(ROOT, "ckpts", "mnist_classifier.pt")
#: Width of the penultimate layer (the features of :func:`penultimate_features`).
FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """Three 3×3 conv blocks (16, 32, 64 channels, ReLU, 2×2 max-pool: 32 -> 16 -> 8 -> 4), a
    64-unit ReLU layer (the penultimate features) and a 10-way linear head.

    ``forward(x)``: x (N, 1, 32, 32) in [-1, 1] -> logits (N, 10). ``features(x)`` -> (N, 64)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) in [-1, 1] -> (N, 64) non-negative features."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, 32, 32):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"digit classifier: images must be a tensor (N, 1, 32, 32) in [-1, 1], got {shape}")


def load_classifier(path: str = DEFAULT_PATH, device: str | torch.device = "cpu") -> DigitClassifier:
    """The trained classifier in eval mode. Raises FileNotFoundError naming the training command
    when ``path`` is missing, ValueError (:class:`util.files.FileError`) when the file is
    truncated, corrupt, another kind of file or not this network's state_dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"digit classifier {path!r} does not exist; train it with "
                                "`python -m util.digit_classifier --train`")
    from util.files import load_checkpoint
    model = DigitClassifier()
    state = load_checkpoint(path, "digit classifier")   # weights-only; one line for a bad file
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"digit classifier {path!r}: not a DigitClassifier state_dict "
                         f"({str(exc).splitlines()[0]})") from exc
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def _batched(model: DigitClassifier, method: str, x: torch.Tensor, batch_size: int) -> np.ndarray:
    dev = next(model.parameters()).device
    fn = getattr(model, method)
    outs = [fn(x[i:i + batch_size].float().to(dev)).double().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs).numpy()


def predict_proba(model: DigitClassifier, x: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Class probabilities (softmax of the logits), float64 (N, 10), for images x (N, 1, 32, 32)
    in [-1, 1]. Raises ValueError for another shape."""
    _check_images(x)
    logits = _batched(model, "forward", x, batch_size)
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def penultimate_features(model: DigitClassifier, x: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Penultimate-layer features, float64 (N, FEATURE_DIM), for images x (N, 1, 32, 32) in [-1, 1].
    Raises ValueError for another shape."""
    _check_images(x)
    return _batched(model, "features", x, batch_size)


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D):

        ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})

    (Dowson & Landau 1982; the FID of Heusel et al. 2017, eq. 6), covariances with N − 1, matrix
    square root by ``scipy.linalg.sqrtm`` (its negligible imaginary part dropped). Estimated from
    samples it is biased upwards, more so for small N: compare only figures of equal set sizes.
    Raises ValueError for mismatched widths or fewer than 2 rows."""
    a, b = np.asarray(feat_a, dtype=np.float64), np.asarray(feat_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance: need two (N >= 2, D) arrays of equal D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():      # singular for N <= D: expected, the bias is documented above
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = np.real(scipy.linalg.sqrtm(cov_a @ cov_b))
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random integer shifts of every image by up to ±max_shift pixels (background -1 fills in)."""
    n = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(32)[None])                      # (N, 32)
    cols = (dx[:, None] + torch.arange(32)[None])
    return pad[:, 0][torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]][:, None]


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int = 30, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0, max_shift: int = 2) -> DigitClassifier:
    """Train a :class:`DigitClassifier` on images x (N, 1, 32, 32) in [-1, 1] with labels y (N,)
    (Adam, cross-entropy, cosine learning-rate decay, random shifts of up to ``max_shift`` pixels),
    seeded by ``seed`` (initial weights, batch order, shifts). Returns it in eval mode."""
    _check_images(x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            xb = _shift(x[idx], gen, max_shift) if max_shift else x[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum().item()
            total += len(idx)
        log.info("epoch %d: loss %.4f, train accuracy %.4f", epoch + 1, loss_sum / total, correct / total)
    return model.eval().requires_grad_(False)


def _split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from data.mnist import load_mnist32, to_model_range
    imgs, labels = load_mnist32(split)
    return torch.from_numpy(to_model_range(imgs)), torch.from_numpy(labels)


def accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of images x (N, 1, 32, 32) whose most probable class equals y (N,)."""
    return float((predict_proba(model, x).argmax(1) == y.numpy()).mean())


def main(argv=None) -> int:
    """CLI: ``--train`` trains on the train split and writes ``--out``; always prints the
    accuracy on the tune and test splits. Returns the exit status (2 for bad input)."""
    p = argparse.ArgumentParser(description="Train / check the MNIST digit classifier (util/digit_classifier.py).")
    p.add_argument("--train", action="store_true", help="train on the train split and write --out")
    p.add_argument("--out", default=DEFAULT_PATH)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(a.threads)
    try:
        if a.train:
            x, y = _split("train")
            model = train_classifier(x, y, epochs=a.epochs, seed=a.seed)
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            torch.save(model.state_dict(), a.out + ".tmp")
            os.replace(a.out + ".tmp", a.out)
            print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes, "
                  f"{sum(t.numel() for t in model.parameters())} parameters)")
        model = load_classifier(a.out)
        for split in ("train", "tune", "test"):
            print(f"{split} accuracy: {accuracy(model, *_split(split)):.4f}")
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
