"""Image decoding and atomic writes of the run's outputs.

:func:`decode_image` turns a decoded PIL image of any mode and bit depth the data loaders may
meet into an 8-bit ``L`` or ``RGB`` image (16-bit images scaled, not clipped) or refuses it.
The writers (PNG images, ``.npy`` kernels and masks, the metrics CSV, JSON summaries) write each
file to a temporary name in its folder and rename it over the target, so an interrupted run
never leaves a half-written file."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image


#: PIL modes that PIL itself converts correctly to 8-bit ``L`` / ``RGB`` (alpha is dropped;
#: ``P``/``PA`` through their palette, ``CMYK``/``YCbCr``/``HSV`` by PIL's colour conversion).
EIGHT_BIT_MODES = ("1", "L", "P", "PA", "LA", "RGB", "RGBX", "RGBA", "CMYK", "YCbCr", "HSV")
#: Premultiplied-alpha modes: un-premultiplied (to ``LA`` / ``RGBA``) before the alpha is dropped.
PREMULTIPLIED_MODES = {"La": "LA", "RGBa": "RGBA"}
#: 16-bit integer modes: scaled by 255 / 65535 (30000 -> 117, not clipped to 255).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: Every mode :func:`decode_image` accepts ("I": 32-bit integers holding 16-bit values, as older
#: Pillow versions open 16-bit PNGs; "F": 32-bit floats in [0, 1]).
DECODABLE_MODES = EIGHT_BIT_MODES + tuple(PREMULTIPLIED_MODES) + SIXTEEN_BIT_MODES + ("I", "F")


def has_alpha(img: Image.Image) -> bool:
    """Whether a PIL image carries transparency (an alpha channel, or a palette / grey image with
    a transparent colour), which :func:`decode_image` drops."""
    return img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or ("transparency" in img.info and img.mode in ("P", "L", "RGB"))


def decode_image(img: Image.Image, channels: int) -> Image.Image:
    """Convert a decoded PIL image to 8 bits per channel with ``channels`` channels.

    Args:
        img: a PIL image in one of :data:`DECODABLE_MODES`.
        channels: 1 (``L``, ITU-R 601 luma for colour images) or 3 (``RGB``; grey replicated).
    Returns:
        A PIL image of mode ``L`` (channels 1) or ``RGB`` (channels 3). 8-bit modes go through
        PIL's own conversion; an alpha channel is dropped. 16-bit modes (``I;16*``, and ``I``
        holding values in [0, 65535]) are scaled by 255 / 65535 with rounding; ``F`` in [0, 1]
        is scaled by 255.
    Raises:
        ValueError (one line) for ``channels`` not in {1, 3}, a mode not in
        :data:`DECODABLE_MODES` (e.g. ``LAB``), an ``I`` image with values outside [0, 65535]
        or an ``F`` image with values outside [0, 1] or not finite.

    >>> import numpy as np
    >>> img = Image.fromarray(np.full((2, 2), 30000, dtype=np.uint16))
    >>> img.mode, np.asarray(decode_image(img, 1))[0, 0].item()
    ('I;16', 117)
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    target = "L" if channels == 1 else "RGB"
    mode = img.mode
    if mode in PREMULTIPLIED_MODES:
        img, mode = img.convert(PREMULTIPLIED_MODES[mode]), PREMULTIPLIED_MODES[mode]
    if mode in EIGHT_BIT_MODES:
        if mode in ("P", "PA"):   # through RGBA: PIL warns when a palette's transparency is dropped directly
            img = img.convert("RGBA")
        return img.convert(target)   # drops an alpha channel
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"32-bit integer image (mode I) with values in [{arr.min()}, {arr.max()}]; "
                             "only 16-bit values [0, 65535] are supported")
        pixels = np.rint(arr * (255.0 / 65535.0)).astype(np.uint8)
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise ValueError("32-bit float image (mode F) with values outside [0, 1] or not finite; "
                             "only floats in [0, 1] are supported")
        pixels = np.rint(arr * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image mode {mode!r}; supported: {', '.join(DECODABLE_MODES)}")
    return Image.fromarray(pixels, mode="L").convert(target)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + ``os.replace``).

    Creates the parent folder. The file gets the mode a plain ``open(path, "w")`` would give
    (0666 less the process umask; ``mkstemp``'s private 0600 is not kept). On any error the
    temporary file is removed and ``path`` keeps its previous content (or stays absent); an
    OSError (e.g. ENOSPC, a full disk) is re-raised with ``filename`` = ``path``, so that its
    message names the file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        if hasattr(os, "fchmod"):   # POSIX
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp):
            # a full disk (ENOSPC) or a quota fails in write / fsync without a file name: name the target
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_via_buffer(path: str, write: Callable[[io.BytesIO], None]) -> None:
    buf = io.BytesIO()
    write(buf)
    atomic_write_bytes(path, buf.getvalue())


def to_uint8_image(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """Convert one image in [0, 1] to uint8 pixels for saving.

    Args:
        img: (C, H, W) tensor or array with C in {1, 3} (or (H, W)), values in [0, 1]; values
            outside are clipped and NaN becomes 0.
    Returns:
        (H, W) uint8 for one channel, (H, W, 3) uint8 for three.
    Raises:
        ValueError for another shape or channel count.
    """
    arr = img.detach().float().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.float32)
    if arr.ndim == 3:
        if arr.shape[0] not in (1, 3):
            raise ValueError(f"expected 1 or 3 channels, got image of shape {arr.shape}")
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    elif arr.ndim != 2:
        raise ValueError(f"expected a (C, H, W) or (H, W) image, got shape {arr.shape}")
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(path: str, img: torch.Tensor | np.ndarray) -> None:
    """Save one image in [0, 1] ((C, H, W), C in {1, 3}) as an 8-bit PNG, atomically."""
    pixels = to_uint8_image(img)
    _atomic_via_buffer(path, lambda buf: Image.fromarray(pixels).save(buf, format="PNG"))


def save_npy(path: str, array: np.ndarray | torch.Tensor) -> None:
    """Save an array (e.g. a blur kernel (k, k) or a mask (C, H, W)) as ``.npy``, atomically.
    Blur kernels are saved as convolution kernels (impulse responses); code that applies them
    with ``F.conv2d`` (correlation, as the paper's and DPS's) needs them rotated by 180°."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    _atomic_via_buffer(path, lambda buf: np.save(buf, np.asarray(array), allow_pickle=False))


def save_json(path: str, obj: Any) -> None:
    """Save ``obj`` as indented JSON, atomically (tuples become lists; NaN becomes null)."""
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if np.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def write_csv(path: str, fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` (dicts keyed by ``fieldnames``; missing entries empty) as CSV, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fieldnames})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def read_csv(path: str) -> list[dict[str, str]]:
    """Read a CSV with a header into a list of {column: text} rows; [] when the file is absent."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
