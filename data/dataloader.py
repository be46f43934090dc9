"""Test images for the inverse problems, chosen by ``data.name`` in the task config through a
small registry: ``ffhq``, ``imagenet`` and ``folder`` read a folder of png/jpg/jpeg files
(recursive, sorted by relative path) or an ``.npz`` batch of uint8 N x H x W x C images (the
ImageNet 256 reference-batch format, key ``arr_0``).

Images of any PIL mode and bit depth (16-bit scaled to 8 bits, alpha dropped; see
:func:`util.image_io.decode_image`) are converted to the model's channel count (1: luminance,
3: RGB), centre-cropped to a square and resized to the model's image size (one warning when
some were not already that size), and returned as (C, H, W) float32 tensors in [-1, 1]. An image that cannot be decoded raises
:class:`UnreadableImageError` when loaded, so the caller can skip it and go on.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from util.image_io import decode_image, has_alpha

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

__DATASETS__: dict[str, Callable[..., "ImageDataset"]] = {}


class DataError(ValueError):
    """The data config names no usable data (unknown name, missing or empty root)."""


class UnreadableImageError(OSError):
    """One image of the dataset could not be decoded."""


def register_dataset(name: str):
    """Class or factory decorator: make it available as ``data.name: <name>``."""
    def wrapper(obj):
        if name in __DATASETS__:
            raise NameError(f"dataset {name!r} is already registered")
        __DATASETS__[name] = obj
        return obj
    return wrapper


def list_datasets() -> list[str]:
    """Registered ``data.name`` values."""
    return sorted(__DATASETS__)


def get_dataset(name: str, root: str, image_size: int, channels: int = 3, **kwargs) -> "ImageDataset":
    """Build the dataset registered as ``name``.

    Args:
        name: a registered name (see :func:`list_datasets`).
        root: folder of images, or an ``.npz`` file.
        image_size: side of the square images returned.
        channels: 1 or 3.
        kwargs: dataset-specific options.
    Raises:
        DataError for an unknown name, a missing root, or a root with no images.
    """
    if name not in __DATASETS__:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}")
    return __DATASETS__[name](root=root, image_size=image_size, channels=channels, **kwargs)


def to_model_image(img: Image.Image, image_size: int, channels: int) -> tuple[torch.Tensor, bool]:
    """Convert a PIL image to a model input.

    Returns ((C, H, W) float32 in [-1, 1] with C = ``channels`` and H = W = ``image_size``,
    whether it had to be cropped or resized). Every mode and bit depth of
    :func:`util.image_io.decode_image` is decoded (16-bit scaled to 8 bits, alpha dropped).
    Raises ValueError for ``channels`` not in {1, 3} or an image that mode cannot decode."""
    img = decode_image(img, channels)
    changed = img.size != (image_size, image_size)
    if changed:
        img = center_crop_resize(img, image_size)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr)), changed


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop ``img`` to a square of its shorter side, then resize it to ``size`` x ``size``
    (Lanczos; box filtering first when shrinking a lot)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0 if side > size else None)
    return img


class ImageDataset:
    """Indexable images: ``len(ds)``, ``ds.names[i]`` (source name), ``ds.load(i)`` -> (C, H, W) in [-1, 1]."""

    names: list[str]

    def __init__(self, image_size: int, channels: int):
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.resized = 0
        self._warned = False
        self._warned_alpha = False

    def __len__(self) -> int:
        return len(self.names)

    def _finish(self, img: Image.Image, name: str = "") -> torch.Tensor:
        if not self._warned_alpha and has_alpha(img):   # said once per dataset, naming the first file
            self._warned_alpha = True
            log.warning("image %s has transparency (mode %s): the alpha channel is dropped and the colours under it "
                        "are used as they are; flatten it onto a background first if that matters", name or "?",
                        img.mode)
        x, changed = to_model_image(img, self.image_size, self.channels)
        if changed:
            self.resized += 1
            if not self._warned:
                self._warned = True
                log.warning("images are not %dx%d: centre-cropping and resizing them (see data/data_resizer.py "
                            "to prepare a folder once)", self.image_size, self.image_size)
        return x

    def load(self, index: int) -> torch.Tensor:  # pragma: no cover - interface
        """Image ``index`` as (C, H, W) float32 in [-1, 1]; raises UnreadableImageError."""
        raise NotImplementedError


class FolderDataset(ImageDataset):
    """png/jpg/jpeg files under ``root`` (recursive, sorted by relative path)."""

    def __init__(self, root: str, image_size: int, channels: int = 3):
        super().__init__(image_size, channels)
        if os.path.isfile(root):
            raise DataError(f"data root {root!r} is a file; expected a folder of png/jpg images or an .npz file")
        if not os.path.isdir(root):
            raise DataError(f"data root {root!r} does not exist")
        paths = []
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for f in files:
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    paths.append(os.path.relpath(os.path.join(folder, f), root))
        if not paths:
            raise DataError(f"data root {root!r} holds no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images")
        self.root = root
        self.names = sorted(paths)

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as (C, H, W) float32 in [-1, 1]; raises UnreadableImageError."""
        path = os.path.join(self.root, self.names[index])
        try:
            with Image.open(path) as img:
                img.load()
                return self._finish(img, path)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise UnreadableImageError(f"cannot read image {path}: {' '.join(str(exc).split())}") from exc


class NpzDataset(ImageDataset):
    """uint8 images N x H x W x C (or N x H x W) under key ``arr_0`` of an ``.npz`` file."""

    def __init__(self, root: str, image_size: int, channels: int = 3, key: str = "arr_0"):
        super().__init__(image_size, channels)
        from util.files import FileError, load_npz
        try:
            arr = load_npz(root, "data root", key)
        except FileError as exc:   # missing, a folder, damaged / truncated, another kind of file, no key
            raise DataError(str(exc)) from None
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (3, 4)):
            raise DataError(f"data root {root!r}: expected uint8 images N x H x W x C, got {arr.dtype} {arr.shape}")
        if len(arr) == 0:
            raise DataError(f"data root {root!r} holds no images")
        self.array = arr
        width = max(5, len(str(len(arr) - 1)))
        self.names = [f"{i:0{width}d}" for i in range(len(arr))]

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as (C, H, W) float32 in [-1, 1]."""
        return self._finish(Image.fromarray(self.array[index]), f"{self.names[index]} of the .npz")


def _folder_or_npz(root: str, image_size: int, channels: int = 3, **kwargs) -> ImageDataset:
    if str(root).lower().endswith(".npz"):
        return NpzDataset(root, image_size, channels, **kwargs)
    if kwargs:
        raise DataError(f"unknown data option(s) {sorted(kwargs)} for an image folder; valid: name, root")
    return FolderDataset(root, image_size, channels)


for _name in ("folder", "ffhq", "imagenet"):
    register_dataset(_name)(_folder_or_npz)
