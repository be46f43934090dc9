"""Set-level metrics: how far the distribution of a set of images (a run's reconstructions) is
from that of a reference set (their ground truths), as the field's tables report them.

- **FID** (Heusel et al. 2017, eq. 6) and **KID** (Bińkowski et al. 2018: unbiased MMD² with the
  cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets) on the 2048-d
  pool features of the standard FID Inception-v3 (the TensorFlow graph of Heusel et al. ported
  to PyTorch), both from **torch-fidelity** (its feature extractor, ``fid_statistics_to_metric``
  and ``kid_features_to_metric``). They are computed only when torch-fidelity is installed and
  :data:`INCEPTION_WEIGHTS` is already in the torch hub cache (nothing downloads); otherwise one
  note says which file to cache.
- **FD-digits**, for the embedded MNIST prior's (1, 32, 32) images: the Fréchet distance of the
  same formula on the penultimate features of the embedded digit classifier
  (:mod:`util.digit_classifier`, ``ckpts/mnist_classifier.pt``), offline. Inception features
  mean little on 32×32 grey digits, and the weights need a download; this one always runs.

Features are computed from the PNGs on disk (the 8-bit images a run writes and FID tools read), so
a resumed run, a multi-process run and ``python -m util.set_metrics DIR_A DIR_B`` give the same
figures for the same images. All these distances are biased upwards for small sets: compare only
figures of equal set sizes.

Command line (any two folders of png/jpg images; the first is scored against the second)::

    python -m util.set_metrics results/MNIST/DDIM/motion_deblur/recon results/MNIST/DDIM/motion_deblur/label
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

#: torch-fidelity's Inception-v3 weights (``torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3``),
#: looked up in ``<torch.hub.get_dir()>/checkpoints/``.
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
#: KID: number of random subsets and their largest size (torch-fidelity's defaults; the size is
#: cut to the smaller set when a set is smaller).
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
#: Seed of KID's subset draws (fixed: the same images give the same KID).
KID_SEED = 2020
#: The image shape the digit classifier reads.
DIGIT_SHAPE = (1, 32, 32)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class SetMetricsError(ValueError):
    """A folder or image given to the set metrics cannot be used (one line for ``error:``)."""


def inception_weights_path() -> str:
    """``<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth`` (``$TORCH_HOME`` moves it)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_WEIGHTS)


# --------------------------------------------------------------------------------------------
# Formulas
# --------------------------------------------------------------------------------------------

def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """Fréchet distance ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) between Gaussians fitted to
    feature sets (N_a, D) and (N_b, D) (Heusel et al. 2017, eq. 6); see
    :func:`util.digit_classifier.frechet_distance`, which this is. Raises ValueError for
    mismatched widths or fewer than 2 rows."""
    from util.digit_classifier import frechet_distance as fd
    return fd(feat_a, feat_b)


def kid(feat_a: np.ndarray, feat_b: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = KID_SEED) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018) with torch-fidelity's ``kid_features_to_metric``: the mean and
    std over ``subsets`` random subsets of size min(``subset_size``, N_a, N_b) of the unbiased MMD²
    with kernel k(x, y) = (xᵀy / D + 1)³. Features (N, D), N >= 2. Raises ImportError without
    torch-fidelity, ValueError for fewer than 2 rows."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    a, b = np.asarray(feat_a, dtype=np.float64), np.asarray(feat_b, dtype=np.float64)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {len(a)} and {len(b)}")
    out = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets,
                                 kid_subset_size=size, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=seed, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def fid(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """FID by torch-fidelity's formula (``fid_features_to_statistics`` and
    ``fid_statistics_to_metric``: Tr (Σ_a Σ_b)^{1/2} from the eigenvalues of Σ_a Σ_b) on features
    (N, D), N >= 2. Raises ImportError without torch-fidelity, ValueError for fewer than 2 rows."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    if min(len(feat_a), len(feat_b)) < 2:
        raise ValueError(f"FID needs at least 2 images in each set, got {len(feat_a)} and {len(feat_b)}")
    sa = fid_features_to_statistics(torch.from_numpy(np.asarray(feat_a, dtype=np.float64)))
    sb = fid_features_to_statistics(torch.from_numpy(np.asarray(feat_b, dtype=np.float64)))
    return float(fid_statistics_to_metric(sa, sb, verbose=False)[KEY_METRIC_FID])


# --------------------------------------------------------------------------------------------
# Feature extractors (from 8-bit images on disk)
# --------------------------------------------------------------------------------------------

def read_uint8(path: str) -> np.ndarray:
    """One image file as uint8 (C, H, W), C = 1 (grey) or 3 (RGB; alpha dropped with a warning).
    Raises SetMetricsError (one line) for a missing or undecodable file."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                log.warning("%s has an alpha channel; the set metrics use its colours without it", path)
            mode = "L" if img.mode in ("1", "L", "LA", "I;16", "I", "F") else "RGB"
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
    except FileNotFoundError:
        raise SetMetricsError(f"image {path} does not exist") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise SetMetricsError(f"{path} is not a readable image: {' '.join(str(exc).split())}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _stack(paths: Sequence[str]) -> np.ndarray:
    arrays = [read_uint8(p) for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise SetMetricsError(f"images of different sizes {sorted(shapes)} (first: {paths[0]}); a set must hold "
                              "images of one size")
    return np.stack(arrays)


class DigitFeatures:
    """Penultimate features (N, 64) of the embedded digit classifier for (1, 32, 32) images."""
    name = "digits"

    def __init__(self, device: str | torch.device = "cpu"):
        from util.digit_classifier import load_classifier
        self.clf = load_classifier(device=device)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: uint8 (N, 1, 32, 32) -> float64 (N, 64)."""
        from util.digit_classifier import penultimate_features
        x = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)
        return penultimate_features(self.clf, x)


class InceptionFeatures:
    """torch-fidelity's FID Inception-v3 pool features (N, 2048) for uint8 (N, C, H, W) images
    (grey repeated to RGB; resized to 299 inside, as TensorFlow did). Construct it only when
    :func:`inception_weights_path` exists; the weights are loaded weights-only.
    Raises ImportError without torch-fidelity, OSError / RuntimeError for an unusable file."""
    name = "inception"

    def __init__(self, device: str | torch.device = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        self.device = torch.device(device)
        with _weights_only_loads():
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """pixels: uint8 (N, C, H, W), C in {1, 3} -> float64 (N, 2048)."""
        x = torch.from_numpy(pixels)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        out = [self.net(x[k:k + batch_size].to(self.device))[0].double().cpu() for k in range(0, len(x), batch_size)]
        return torch.cat(out).numpy()


@contextlib.contextmanager
def _weights_only_loads():
    """Every torch.load inside is weights-only (torch-fidelity's own call does not ask for it)."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def make_extractors(image_shape: Sequence[int], device: str | torch.device = "cpu"
                    ) -> tuple[list[Callable[[np.ndarray], np.ndarray]], list[str]]:
    """The feature extractors that can run here for images of shape (C, H, W), and a note for
    each one that cannot.

    Returns:
        ([DigitFeatures] for (1, 32, 32) images + [InceptionFeatures] when torch-fidelity and
        :data:`INCEPTION_WEIGHTS` are present, [one-line notes]). Never raises for a missing
        optional part: it becomes a note.
    """
    extractors: list = []
    notes: list[str] = []
    if tuple(int(v) for v in image_shape) == DIGIT_SHAPE:
        try:
            extractors.append(DigitFeatures(device))
        except (OSError, ValueError, RuntimeError) as exc:
            notes.append(f"FD-digits not computed: {' '.join(str(exc).split())}")
    path = inception_weights_path()
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        notes.append("FID / KID not computed: torch-fidelity is not installed (pip install -r requirements.txt)")
        return extractors, notes
    if not os.path.isfile(path):
        notes.append(f"FID / KID not computed: the Inception weights {path} are not cached; to enable them, "
                     f"download {INCEPTION_URL} there (or run once: python -c \"import torch_fidelity."
                     "feature_extractor_inceptionv3 as m; m.FeatureExtractorInceptionV3('x', ['2048'])\")")
        return extractors, notes
    try:
        extractors.append(InceptionFeatures(device))
    except (OSError, RuntimeError, ValueError) as exc:
        notes.append(f"FID / KID not computed: could not load the Inception weights {path} "
                     f"({' '.join(str(exc).split())[:200]})")
    return extractors, notes


def features(paths: Sequence[str], extractors: Sequence[Callable[[np.ndarray], np.ndarray]],
             batch_size: int = 64) -> dict[str, np.ndarray]:
    """{extractor name: float64 (N, D) features} of the image files ``paths`` (read in batches).
    Raises SetMetricsError for an unreadable image or images of different sizes."""
    out: dict[str, list] = {e.name: [] for e in extractors}
    for k in range(0, len(paths), batch_size):
        pixels = _stack(paths[k:k + batch_size])
        for e in extractors:
            out[e.name].append(e(pixels))
    return {name: (np.concatenate(v) if v else np.zeros((0, 0))) for name, v in out.items()}


def score(feats_a: dict[str, np.ndarray], feats_b: dict[str, np.ndarray], notes: Sequence[str] = ()) -> dict:
    """Set metrics of set a against set b from their features (:func:`features`).

    Returns {"n": N_a, "fd_digits": float | None, "fid": float | None, "kid": float | None,
    "kid_std": float | None, "notes": [str]}; a metric is None when its features are absent or a
    set has fewer than 2 images (then a note says so)."""
    notes = list(notes)
    n = min((len(v) for v in feats_a.values()), default=0)
    out: dict[str, Any] = {"n": n, "fd_digits": None, "fid": None, "kid": None, "kid_std": None}
    if feats_a and min(n, min(len(v) for v in feats_b.values())) < 2:
        notes.append(f"set metrics need at least 2 images in each set (have {n})")
        out["notes"] = notes
        return out
    if "digits" in feats_a:
        out["fd_digits"] = frechet_distance(feats_a["digits"], feats_b["digits"])
    if "inception" in feats_a:
        out["fid"] = fid(feats_a["inception"], feats_b["inception"])
        out["kid"], out["kid_std"] = kid(feats_a["inception"], feats_b["inception"])
    out["notes"] = notes
    return out


def format_set_metrics(result: dict | None, count: bool = True) -> str:
    """The metrics computed, e.g. ``"FD-digits 12.345, FID 45.67, KID 0.0123 over 16 images"``
    (without "over N images" when ``count`` is False; "" when none was computed)."""
    if not result:
        return ""
    parts = []
    if result.get("fd_digits") is not None:
        parts.append(f"FD-digits {result['fd_digits']:.3f}")
    if result.get("fid") is not None:
        parts.append(f"FID {result['fid']:.2f}")
    if result.get("kid") is not None:
        parts.append(f"KID {result['kid']:.4f}")
    if not parts:
        return ""
    return ", ".join(parts) + (f" over {result['n']} images" if count else "")


def list_images(folder: str, what: str) -> list[str]:
    """The png/jpg/jpeg files directly in ``folder``, sorted by name. Raises SetMetricsError
    (one line) when it is missing, a file, or holds no image."""
    if not os.path.exists(folder):
        raise SetMetricsError(f"{what} {folder} does not exist")
    if not os.path.isdir(folder):
        raise SetMetricsError(f"{what} {folder} is a file; give a folder of png/jpg images")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    if not names:
        raise SetMetricsError(f"{what} {folder} holds no png/jpg images")
    return [os.path.join(folder, f) for f in names]


def compare_folders(dir_a: str, dir_b: str, device: str | torch.device = "cpu") -> dict:
    """:func:`score` of the images of folder ``dir_a`` against those of ``dir_b`` (any counts).
    Raises SetMetricsError for a missing / empty folder, an unreadable image or mixed sizes."""
    paths_a, paths_b = list_images(dir_a, "folder"), list_images(dir_b, "folder")
    shape_a, shape_b = read_uint8(paths_a[0]).shape, read_uint8(paths_b[0]).shape
    if shape_a != shape_b:
        raise SetMetricsError(f"{dir_a} holds {'x'.join(map(str, shape_a))} images, {dir_b} "
                              f"{'x'.join(map(str, shape_b))}; compare sets of one size")
    extractors, notes = make_extractors(shape_a, device)
    result = score(features(paths_a, extractors), features(paths_b, extractors), notes)
    result["n_reference"] = len(paths_b)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m util.set_metrics DIR_A DIR_B [--device D] [--json PATH]``: prints one line
    (and writes the result as JSON with ``--json``); exit 2 with one ``error:`` line for bad input."""
    parser = argparse.ArgumentParser(prog="python -m util.set_metrics",
                                     description="FID / KID (Inception, torch-fidelity, when its weights are "
                                                 "cached) and FD-digits (the embedded digit classifier, for 32x32 "
                                                 "grey images) of the images in DIR_A against those in DIR_B.")
    parser.add_argument("dir_a", help="folder of the images to score (e.g. a run's recon/)")
    parser.add_argument("dir_b", help="folder of the reference images (e.g. a run's label/)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        result = compare_folders(args.dir_a, args.dir_b, args.device)
    except (SetMetricsError, RuntimeError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        from util.image_io import save_json
        save_json(args.json, result)
    text = format_set_metrics(result)
    print(f"{args.dir_a} against {args.dir_b}: {text or 'no set metric computed'} "
          f"({result['n_reference']} reference images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------------------------
# Over a run (util.set_metrics is called by runner.Runner at the end of a run)
# --------------------------------------------------------------------------------------------

def run_features(out_dir: str, names: Sequence[str], image_shape: Sequence[int],
                 device: str | torch.device = "cpu") -> dict:
    """Features of one process's finished images of a run, from their PNGs
    (``out_dir/recon/<name>.png`` against ``out_dir/label/<name>.png``): resumed (skipped) images
    and new ones alike.

    Returns {"names": [...], "recon": {extractor: (N, D)}, "label": {...}, "notes": [...]};
    an unreadable PNG becomes a note (never raises)."""
    extractors, notes = make_extractors(image_shape, device)
    try:
        recon = features([os.path.join(out_dir, "recon", n + ".png") for n in names], extractors)
        label = features([os.path.join(out_dir, "label", n + ".png") for n in names], extractors)
    except SetMetricsError as exc:
        return {"names": [], "recon": {}, "label": {}, "notes": notes + [f"set metrics not computed: {exc}"]}
    return {"names": list(names), "recon": recon, "label": label, "notes": notes}


def run_score(parts: Sequence[dict | None]) -> dict | None:
    """:func:`score` of a run from the :func:`run_features` of every process (rank order; the
    rows are put in image-name order first, so the result does not depend on the process
    count). None when no process had images to score. The notes are logged once (INFO when some
    metric was computed, else WARNING)."""
    parts = [p for p in parts if p]
    if not parts or not any(p["names"] for p in parts) and not any(p["notes"] for p in parts):
        return None
    names = [n for p in parts for n in p["names"]]
    order = np.argsort(names, kind="stable")
    keys = sorted({k for p in parts for k in p["recon"]})

    def joined(side: str) -> dict[str, np.ndarray]:
        return {k: np.concatenate([p[side][k] for p in parts if p["names"]])[order] for k in keys}
    notes = list(dict.fromkeys(n for p in parts for n in p["notes"]))
    if names:
        result = score(joined("recon"), joined("label"), notes)
    else:
        result = {"n": 0, "fd_digits": None, "fid": None, "kid": None, "kid_std": None, "notes": notes}
    computed = bool(format_set_metrics(result))
    for note in result["notes"]:
        log.log(logging.INFO if computed else logging.WARNING, "%s", note)
    return result
