"""Measurements, kernels and masks read from files: the measurement mode of ``main.py``
(``--measurement_dir DIR``, restoring images that are already degraded) and the fixed
``operator: {name: motion_blur, kernel: k.npy}`` / ``{name: inpainting, mask: m.png}`` of a task
config. User kernels and masks reach an operator only through its ``load_state_dict`` (the
same path as its own random draws), one entry per image of a batch.

Layout of DIR (the one a normal run writes, so a run's output folder can be fed back):

    DIR/measurement/<name>.npy   y in its own geometry, (C, h, w) (or (h, w) for C = 1), on the
                                 [-1, 1] image scale (float32 in a run's output)
    DIR/measurement/<name>.png   or a plain image (.png/.jpg/.jpeg) of y: the low-resolution image
                                 for super-resolution, the blurred one for deblurring, the masked
                                 one for inpainting ([0, 255] maps to [-1, 1]; y is then
                                 restricted to what A produces: zero in the mask's holes)
    DIR/params/<name>.npy        for operators with per-image parts: the kernel (kh, kw) or the
                                 mask (H, W) of 0/1 (1 = observed); a mask may also be
    DIR/params/<name>.png        a black-and-white PNG (white = observed)
    DIR/label/<name>.png         optional ground truth x at the model's size (.png/.jpg or a
                                 (C, H, W) .npy on [-1, 1]); when label/ exists every measurement
                                 needs one, and PSNR / SSIM / LPIPS are computed against it (a
                                 run's own output folder has it)

Kernels follow our operators' convention: true (circular) convolution, y[p] = Σ_i k[i] x[p − (i − c)]
with centre c = (kh // 2, kw // 2); the paper's code (``F.conv2d``) correlates, i.e. uses k
rotated by 180°. Kernels are normalised to sum 1.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from util.image_io import has_alpha

log = logging.getLogger(__name__)

MEASUREMENT_SUBDIR = "measurement"
PARAMS_SUBDIR = "params"
#: Optional ground truth of the measurements, as a normal run writes it.
LABEL_SUBDIR = "label"
#: Measurement files, in order of preference when one name has several.
MEASUREMENT_EXTENSIONS = (".npy", ".png", ".jpg", ".jpeg")
#: Kernel / mask files, in order of preference.
PARAM_EXTENSIONS = (".npy", ".png")
#: Keys of an operator config that name a fixed user file instead of random draws, and the
#: ``state_dict`` key of the operators they apply to.
FIXED_KEYS = {"kernel": "kernels", "mask": "masks"}


#: Largest |value| a ``.npy`` file of each kind may hold on the [-1, 1] image scale: a measurement
#: is A x + n (n of std σ_n, a few tenths at most), a ground truth an image. Beyond it the file is
#: on another scale ([0, 255], [0, 1] would pass), refused rather than restored into nonsense.
NPY_LIMITS = {"measurement": 2.0, "ground truth": 1.0 + 1e-3}


class MeasurementError(ValueError):
    """A measurement, kernel or mask file is missing, unreadable or does not fit the operator
    (one line, for ``error: ...`` and exit status 2)."""


# --------------------------------------------------------------------------------------------
# Single files
# --------------------------------------------------------------------------------------------

def _load_npy(path: str, what: str) -> np.ndarray:
    """A numeric array of a ``.npy`` file (:func:`util.files.load_npy`); raises MeasurementError."""
    from util.files import FileError, load_npy
    try:
        return load_npy(path, what)
    except FileError as exc:
        raise MeasurementError(str(exc)) from None


def _load_image(path: str, what: str) -> Image.Image:
    if os.path.isdir(path):
        raise MeasurementError(f"{what} {path} is a folder; expected an image file (.png / .jpg)")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise MeasurementError(f"{what} {path} does not exist") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise MeasurementError(f"{what} {path} is not a readable image: {' '.join(str(exc).split())}") from None


def read_kernel(path: str) -> np.ndarray:
    """A blur kernel from a ``.npy`` file: (kh, kw) float64 normalised to sum 1, applied as a
    true convolution centred on (kh // 2, kw // 2) (see the module docstring).

    Raises:
        MeasurementError: missing/unreadable file, not 2-D, non-finite values, or a sum <= 0.
    """
    if os.path.isdir(path):
        raise MeasurementError(f"kernel {path} is a folder; expected a .npy file holding a (kh, kw) array")
    if not str(path).lower().endswith(".npy"):
        raise MeasurementError(f"kernel {path} must be a .npy file holding a (kh, kw) array")
    arr = _load_npy(path, "kernel")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise MeasurementError(f"kernel {path} must be a 2-D (kh, kw) array, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise MeasurementError(f"kernel {path} holds NaN or infinite values")
    if arr.min() < 0:
        log.warning("kernel %s has negative entries (min %g): a blur kernel is non-negative; check that it is the "
                    "point-spread function, not its inverse or a difference", path, float(arr.min()))
    total = float(arr.sum())
    if total <= 0:
        raise MeasurementError(f"kernel {path} sums to {total:g}; a blur kernel must sum to a positive number "
                               "(it is normalised to sum 1)")
    if abs(total - 1.0) > 1e-6:
        log.info("kernel %s sums to %g; normalised to sum 1", path, total)
    return arr / total


def odd_size(kernel: np.ndarray) -> int:
    """The smallest odd side s >= kh, kw: the square an operator with ``kernel_size`` s holds."""
    s = max(kernel.shape)
    return s if s % 2 else s + 1


def fit_kernel(kernel: np.ndarray, size: int, where: str) -> np.ndarray:
    """Zero-pad a (kh, kw) kernel to (size, size) keeping its centre (kh // 2, kw // 2) on the
    centre (size // 2, size // 2), so the blur is unchanged.

    Raises:
        MeasurementError: kernel larger than ``size`` (naming ``where``).

    >>> fit_kernel(np.ones((2, 2)) / 4, 3, "k")[:2, :2].tolist()   # centre (1, 1) stays at (1, 1)
    [[0.25, 0.25], [0.25, 0.25]]
    """
    kh, kw = kernel.shape
    if kh > size or kw > size:
        raise MeasurementError(f"kernel {where} is {kh}x{kw}, larger than the operator's kernel_size {size}; "
                               f"set task.measurement.operator.kernel_size={odd_size(kernel)}")
    top, left = size // 2 - kh // 2, size // 2 - kw // 2
    out = np.zeros((size, size), dtype=np.float64)
    out[top:top + kh, left:left + kw] = kernel
    return out


def read_mask(path: str, hw: tuple[int, int]) -> np.ndarray:
    """An inpainting mask (1 = observed, 0 = missing) of the image size ``hw`` = (H, W), from a
    ``.npy`` array of 0/1 (or booleans) or a black-and-white image (white = observed).

    Returns:
        (H, W) float64 of 0 and 1.

    Raises:
        MeasurementError: missing/unreadable file, other size, values other than 0/1
            (black/white), e.g. a grey or anti-aliased (JPEG) mask, or no observed pixel at all.
    """
    if str(path).lower().endswith(".npy"):
        arr = _load_npy(path, "mask").astype(np.float64)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise MeasurementError(f"mask {path} must be a 2-D (H, W) array, got shape {arr.shape}")
        bad = arr[(arr != 0) & (arr != 1)]
        if bad.size:
            raise MeasurementError(f"mask {path} is not binary: it holds {bad.flat[0]:g} (a mask holds only 0 = "
                                   "missing and 1 = observed)")
    else:
        img = _load_image(path, "mask")
        rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
        if has_alpha(img):
            log.warning("mask %s has transparency (mode %s): its alpha channel is ignored, only black / white count",
                        path, img.mode)
        grey_ok = np.all(rgb == rgb[..., :1])
        values = np.unique(rgb)
        if not grey_ok or not set(values.tolist()) <= {0, 255}:
            odd = [v for v in values.tolist() if v not in (0, 255)]
            found = f"grey level {odd[0]}" if (grey_ok and odd) else "colours"
            raise MeasurementError(f"mask {path} is not binary: it holds {found} besides black (0) and white (255); "
                                   "save it as a black-and-white PNG (white = observed), not a JPEG")
        arr = (rgb[..., 0] == 255).astype(np.float64)
    if tuple(arr.shape) != tuple(hw):
        raise MeasurementError(f"mask {path} is {arr.shape[0]}x{arr.shape[1]} but the images are {hw[0]}x{hw[1]}")
    if not arr.any():
        raise MeasurementError(f"mask {path} observes no pixel (all 0); a mask marks the observed pixels with 1 "
                               "(white), the missing ones with 0 (black)")
    return arr


def read_measurement(path: str, y_shape: Sequence[int], what: str = "", kind: str = "measurement",
                     image_scale: bool = True) -> torch.Tensor:
    """One measurement y from a ``.npy`` array ((C, h, w), or (h, w) for C = 1, on the [-1, 1]
    scale) or an image (.png/.jpg/.jpeg, converted to C channels, [0, 255] -> [-1, 1]).

    Args:
        path: the file.
        y_shape: the (C, h, w) the operator gives for the model's images.
        what: how the operator's geometry is described in the error message.
        kind: what the file is, for the error messages ("measurement", "ground truth").
        image_scale: y lives on the [-1, 1] image scale (checked against :data:`NPY_LIMITS`);
            False for an operator whose y is not an image (``y_is_image`` false: phase
            retrieval's Fourier magnitudes, whose scale grows with the image size), where only
            finiteness is checked.

    Returns:
        (C, h, w) float32 tensor.

    Raises:
        MeasurementError: missing/unreadable file, non-finite values, a ``.npy`` whose values
            lie outside the [-1, 1] scale (beyond :data:`NPY_LIMITS`, e.g. 8-bit [0, 255]), or a
            shape other than ``y_shape`` (the message says which shape the operator expects).
    """
    c, h, w = (int(v) for v in y_shape)
    expect = f"{what} expects {c}x{h}x{w}" if what else f"expected {c}x{h}x{w}"
    if str(path).lower().endswith(".npy"):
        arr = _load_npy(path, kind).astype(np.float32)
        if arr.ndim == 2 and c == 1:
            arr = arr[None]
        if tuple(arr.shape) != (c, h, w):
            raise MeasurementError(f"{kind} {path} has shape {'x'.join(map(str, arr.shape))}; {expect} "
                                   "(C, h, w on the [-1, 1] scale)")
        if not np.all(np.isfinite(arr)):
            raise MeasurementError(f"{kind} {path} holds NaN or infinite values")
        limit = NPY_LIMITS.get(kind, NPY_LIMITS["measurement"])
        lo, hi = float(arr.min()), float(arr.max())
        if image_scale and max(-lo, hi) > limit:
            hint = ("; 8-bit pixel values: convert with v / 127.5 - 1" if hi > 2 and lo >= 0 else "")
            raise MeasurementError(f"{kind} {path} holds values in [{lo:g}, {hi:g}]; expected the [-1, 1] image "
                                   f"scale (|v| <= {limit:g}){hint}")
        return torch.from_numpy(np.ascontiguousarray(arr))
    img = _load_image(path, kind)
    if img.size != (w, h):
        raise MeasurementError(f"{kind} {path} is {img.size[1]}x{img.size[0]} pixels; {expect} "
                               "(crop or resize the image, or change the operator)")
    if has_alpha(img):
        log.warning("%s %s has transparency (mode %s): the alpha channel is dropped and the colours under it are "
                    "used as they are", kind, path, img.mode)
    arr = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.float32) / 127.5 - 1.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


# --------------------------------------------------------------------------------------------
# Operators: fixed user kernels / masks and per-image parts
# --------------------------------------------------------------------------------------------

def params_key(operator: Any) -> str | None:
    """The ``state_dict`` key of an operator's per-image parts ("kernels", "masks"), or None
    for an operator without random parts."""
    return getattr(operator, "_state_key", None) if getattr(operator, "is_random", False) else None


def split_fixed(name: str, kwargs: dict) -> tuple[dict, np.ndarray | None, str | None]:
    """Take a fixed user ``kernel`` (a .npy path) or ``mask`` (a .npy / PNG path) out of an
    operator's config arguments.

    For a kernel, ``kernel_size`` becomes the smallest odd side holding it (the kernel is
    zero-padded to it, centre kept) and ``intensity`` (unused) defaults to 0. The mask is read
    later, when the image size is known (:func:`fixed_mask`).

    Returns:
        (the remaining keyword arguments, the (s, s) kernel or None, the mask path or None).

    Raises:
        MeasurementError: both keys, or a key the operator ``name`` has no use for (only
            operators drawing per-image kernels, resp. masks, take them), or a bad kernel file.
    """
    from operators.base import _OPERATORS   # the registry: which per-image parts ``name`` draws
    given = [k for k in FIXED_KEYS if k in kwargs]
    if not given:
        return kwargs, None, None
    if len(given) > 1:
        raise MeasurementError(f"operator {name!r}: give either kernel or mask, not both")
    key = given[0]
    cls = _OPERATORS.get(name)
    if cls is None:
        return kwargs, None, None   # get_operator reports the unknown name
    if not (getattr(cls, "is_random", False) and getattr(cls, "_state_key", "") == FIXED_KEYS[key]):
        takers = sorted(n for n, c in _OPERATORS.items()
                        if getattr(c, "is_random", False) and getattr(c, "_state_key", "") == FIXED_KEYS[key])
        raise MeasurementError(f"operator {name!r} takes no {key} file; a fixed {key} is given to an operator "
                               f"with per-image {FIXED_KEYS[key]}: {', '.join(takers)}")
    rest = {k: v for k, v in kwargs.items() if k != key}
    path = kwargs[key]
    if not isinstance(path, str) or not path:
        raise MeasurementError(f"operator {name!r}: {key} must be a file path, got {path!r}")
    if key == "mask":
        return rest, None, path
    kernel = read_kernel(path)
    size = odd_size(kernel)
    rest["kernel_size"] = size
    rest.setdefault("intensity", 0.0)
    return rest, fit_kernel(kernel, size, path), None


def fixed_mask(path: str, hw: tuple[int, int]) -> np.ndarray:
    """:func:`read_mask` of the config's ``mask`` for images of size ``hw``."""
    return read_mask(path, hw)


def set_params(physics: Any, params: Sequence[np.ndarray], x_shape: Sequence[int]) -> None:
    """Give a random operator the per-image kernels / masks ``params`` (one per image of a batch
    of shape ``x_shape`` = (N, C, H, W)) through ``load_state_dict``, as if it had drawn them.

    Args:
        physics: an ``operators.Physics`` (or a bare operator): anything with ``draw`` and
            ``load_state_dict``.

    Raises:
        ValueError: from the operator, when they do not fit it (kernel_size, mask size, 0/1).
    """
    key = params_key(getattr(physics, "operator", physics))
    if key is None:
        physics.draw(None, tuple(x_shape))
        return
    physics.load_state_dict({key: np.stack([np.asarray(p, dtype=np.float64) for p in params]),
                              "x_shape": tuple(int(s) for s in x_shape)})


# --------------------------------------------------------------------------------------------
# A folder of measurements
# --------------------------------------------------------------------------------------------

def _files_by_stem(folder: str, extensions: Sequence[str]) -> dict[str, str]:
    """{stem: file name} of the files of ``folder`` with one of ``extensions`` (the first in
    ``extensions`` order when a stem has several); hidden files are ignored."""
    found: dict[str, str] = {}
    rank = {e: i for i, e in enumerate(extensions)}
    for f in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(f)
        ext = ext.lower()
        if f.startswith(".") or ext not in rank or not os.path.isfile(os.path.join(folder, f)):
            continue
        if stem not in found or rank[ext] < rank[os.path.splitext(found[stem])[1].lower()]:
            found[stem] = f
    return found


class MeasurementFolder:
    """The measurements of ``DIR`` (layout in the module docstring) for a run with
    ``--measurement_dir``: image i is the i-th measurement in sorted order of names; its ground
    truth is ``DIR/label/<name>`` when that folder exists (then for every measurement), else
    there is none. Everything is read and checked against the operator when the folder is
    opened, so bad input fails before the run starts.

    Args:
        root: DIR.
        operator: the run's operator (its per-image parts, if any, come from ``params/`` or
            from ``fixed``).
        image_shape: (C, H, W) of the model's images.
        fixed: the config's fixed kernel (s, s) or mask (H, W) for every image, or None.

    Attributes:
        names: measurement file names (``<name>.npy`` / ``.png`` / ...), sorted by name.
        channels, image_size: C and H (= W) of the model's images.
        y_shape: (C, h, w) of a measurement.
        has_labels: False (the run samples from the measurements, not from clean images).
        has_references: True when ``DIR/label/`` holds the ground truth of every measurement.

    Raises:
        MeasurementError: no measurement folder or files, a file that does not fit the operator,
            a missing kernel/mask for an operator with per-image parts, a non-binary mask; a
            ``label/`` folder without a ground truth for every measurement, or one of the
            wrong size.
    """

    has_labels = False

    def __init__(self, root: str, operator: Any, image_shape: Sequence[int], fixed: np.ndarray | None = None):
        self.root = root
        self.operator = operator
        self.channels, self.image_size = int(image_shape[0]), int(image_shape[1])
        self.x_shape = (1, *(int(s) for s in image_shape))
        folder = os.path.join(root, MEASUREMENT_SUBDIR)
        if os.path.isfile(root):
            raise MeasurementError(f"--measurement_dir {root} is a file; expected a folder with a "
                                   f"{MEASUREMENT_SUBDIR}/ subfolder of y files")
        if not os.path.isdir(root):
            raise MeasurementError(f"--measurement_dir {root} does not exist (a folder with a {MEASUREMENT_SUBDIR}/ "
                                   f"subfolder of y files is expected)")
        if not os.path.isdir(folder):
            raise MeasurementError(f"--measurement_dir {root} has no {MEASUREMENT_SUBDIR}/ folder; put each "
                                   f"measurement y there as <name>.npy or <name>.png/.jpg (and kernels or masks as "
                                   f"{PARAMS_SUBDIR}/<name>.npy)")
        files = _files_by_stem(folder, MEASUREMENT_EXTENSIONS)
        if not files:
            raise MeasurementError(f"{folder} holds no measurements ({', '.join(MEASUREMENT_EXTENSIONS)} files)")
        self.stems = sorted(files)
        self.names = [files[s] for s in self.stems]
        self.y_shape = tuple(operator.y_shape(self.x_shape))[1:]
        c, h, w = self.image_shape
        self.geometry = f"{operator.name} of the model's {c}x{h}x{w} images"
        self.key = params_key(operator)
        self.fixed = fixed
        pdir = os.path.join(root, PARAMS_SUBDIR)
        self.param_files = _files_by_stem(pdir, PARAM_EXTENSIONS) if os.path.isdir(pdir) else {}
        ldir = os.path.join(root, LABEL_SUBDIR)
        self.label_files = _files_by_stem(ldir, MEASUREMENT_EXTENSIONS) if os.path.isdir(ldir) else {}
        missing = [s for s in self.stems if s not in self.label_files]
        if self.label_files and missing:
            raise MeasurementError(f"{ldir} holds the ground truth of {len(self.stems) - len(missing)} of "
                                   f"{len(self.stems)} measurements (none for {', '.join(missing[:3])}"
                                   f"{', ...' if len(missing) > 3 else ''}); give one per measurement or "
                                   "remove the folder")
        self.has_references = bool(self.label_files)
        for i in range(len(self.names)):   # check everything now: nothing is written before
            self.load(i)
            self.params(i)
            self.reference(i)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's images."""
        return self.channels, self.image_size, self.image_size

    def __len__(self) -> int:
        return len(self.names)

    def params(self, index: int) -> np.ndarray | None:
        """The kernel (kernel_size, kernel_size) or mask (H, W) of measurement ``index``
        (float64), or None for an operator without per-image parts.

        Raises:
            MeasurementError: missing file (and no fixed kernel/mask in the config), or one
                that does not fit the operator.
        """
        if self.key is None:
            return None
        if self.fixed is not None:
            return self.fixed
        stem = self.stems[index]
        what = "kernel" if self.key == "kernels" else "mask"
        if stem not in self.param_files:
            raise MeasurementError(
                f"missing {what} for measurement {self.names[index]}: {self.operator.name} needs "
                f"{os.path.join(self.root, PARAMS_SUBDIR, stem)}.npy"
                + (" (or .png)" if what == "mask" else "")
                + f", or one fixed {what} for all images: task.measurement.operator.{what}=<path>")
        path = os.path.join(self.root, PARAMS_SUBDIR, self.param_files[stem])
        if what == "mask":
            return read_mask(path, (self.image_size, self.image_size))
        if path.lower().endswith(".png"):
            raise MeasurementError(f"kernel {path}: kernels are read from .npy files only")
        size = getattr(self.operator, "kernel_size", None)
        kernel = read_kernel(path)
        return fit_kernel(kernel, int(size), path) if size is not None else kernel

    def reference(self, index: int) -> torch.Tensor | None:
        """The ground truth of measurement ``index`` (``DIR/label/<name>``) as (C, H, W) float32
        on [-1, 1], or None when the folder has no ``label/``. Raises MeasurementError for a
        file that cannot be read or is not the model's C x H x W."""
        if not self.has_references:
            return None
        stem = self.stems[index]
        c, h, w = self.image_shape
        return read_measurement(os.path.join(self.root, LABEL_SUBDIR, self.label_files[stem]), (c, h, w),
                                f"the model's {c}x{h}x{w} images", kind="ground truth")

    def load(self, index: int) -> torch.Tensor:
        """Measurement ``index`` as (C, h, w) float32 on the [-1, 1] scale, as read (the runner
        restricts it to what the operator can produce: a masked photo's holes may hold anything).

        Raises:
            MeasurementError: see :func:`read_measurement`; an image file for an operator whose
                y is not an image (``y_is_image`` false: phase retrieval's Fourier magnitudes).
        """
        name = self.names[index]
        if not getattr(self.operator, "y_is_image", True) and not name.lower().endswith(".npy"):
            raise MeasurementError(f"measurement {os.path.join(self.root, MEASUREMENT_SUBDIR, name)}: {self.operator.name} "
                                   f"measurements are not images; give them as .npy arrays of shape "
                                   f"{'x'.join(map(str, self.y_shape))}")
        return read_measurement(os.path.join(self.root, MEASUREMENT_SUBDIR, self.names[index]), self.y_shape,
                                self.geometry, image_scale=bool(getattr(self.operator, "y_is_image", True)))
