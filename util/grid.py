"""Pictures of a run: ``grid.png`` (one row per image: input | reconstruction | label | |error|)
built from the PNGs a run saved, and the ``--record`` strips of x0_hat over the sampling steps
(``progress/<image>.png``). Pillow only; written atomically."""
from __future__ import annotations

import io
import logging
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from util.image_io import atomic_write_bytes

log = logging.getLogger(__name__)

#: Rows of grid.png at most (the first images of the run).
MAX_ROWS = 16
#: Tiles are zoomed by an integer factor to at least this many pixels on a side.
MIN_TILE = 128
#: Frames of a --record strip at most (evenly spaced over the steps, the last included).
MAX_FRAMES = 10
GAP = 4
HEADER = 16
BACKGROUND = (255, 255, 255)
EMPTY = (96, 96, 96)
TEXT = (0, 0, 0)


def zoom_for(size: int) -> int:
    """Integer zoom so that a ``size``-pixel tile is at least :data:`MIN_TILE` pixels
    (32 -> 4, 64 -> 2, 256 -> 1)."""
    return max(1, -(-MIN_TILE // max(1, size)))


def _rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> (H, W, 3) uint8."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def _read(path: str) -> np.ndarray | None:
    if not os.path.isfile(path):
        return None
    try:
        with Image.open(path) as img:
            return _rgb(np.asarray(img.convert("RGB")))
    except (OSError, ValueError) as exc:
        log.warning("grid: cannot read %s (%s); its tile stays empty", path, exc)
        return None


def abs_error(recon: np.ndarray, label: np.ndarray) -> np.ndarray:
    """|recon − label| averaged over channels, as a grey (H, W, 3) uint8 image (black = exact).

    >>> abs_error(np.full((1, 1, 3), 200, np.uint8), np.full((1, 1, 3), 50, np.uint8))[0, 0].tolist()
    [150, 150, 150]
    """
    err = np.abs(recon.astype(np.int64) - label.astype(np.int64)).mean(axis=2)
    return _rgb(np.round(err).astype(np.uint8))


def compose(rows: Sequence[Sequence[np.ndarray | None]], titles: Sequence[str], row_labels: Sequence[str],
            zoom: int) -> Image.Image:
    """Lay out tiles (each (H, W, 3) uint8, or None for an empty grey tile) in rows under a
    header of ``titles``, each row labelled on the left, every tile zoomed by ``zoom`` (nearest).

    Raises:
        ValueError: no rows, rows of different lengths than ``titles``, or tiles of another size
            than the first one.
    """
    if not rows:
        raise ValueError("compose: no rows")
    first = next((t for r in rows for t in r if t is not None), None)
    h, w = (first.shape[:2] if first is not None else (32, 32))
    th, tw = h * zoom, w * zoom
    font = ImageFont.load_default()
    label_w = max([int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(s, font=font)) for s in row_labels]
                  + [0]) + 2 * GAP
    ncol = len(titles)
    width = label_w + ncol * (tw + GAP) + GAP
    height = HEADER + len(rows) * (th + GAP) + GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((label_w + c * (tw + GAP) + GAP, 2), title, fill=TEXT, font=font)
    for r, row in enumerate(rows):
        if len(row) != ncol:
            raise ValueError(f"compose: row {r} has {len(row)} tiles for {ncol} titles")
        top = HEADER + r * (th + GAP) + GAP
        draw.text((GAP, top + th // 2 - 6), row_labels[r] if r < len(row_labels) else "", fill=TEXT, font=font)
        for c, tile in enumerate(row):
            left = label_w + c * (tw + GAP) + GAP
            if tile is None:
                draw.rectangle((left, top, left + tw - 1, top + th - 1), fill=EMPTY)
                continue
            if tile.shape[:2] != (h, w):
                raise ValueError(f"compose: tile of size {tile.shape[:2]} in a grid of {h}x{w} tiles")
            canvas.paste(Image.fromarray(tile).resize((tw, th), Image.Resampling.NEAREST), (left, top))
    return canvas


def _save(path: str, img: Image.Image) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_run_grid(out_dir: str, names: Sequence[str], max_rows: int = MAX_ROWS) -> str | None:
    """Write ``<out_dir>/grid.png`` from the run's ``input/``, ``recon/`` and ``label/`` PNGs of
    ``names`` (the first ``max_rows`` that have an input): columns input | reconstruction, plus
    label | |error| when the run has labels (not in measurement mode). A missing reconstruction
    (a diverged image) is an empty grey tile. Returns the path, or None when no image has an input.

    Raises:
        OSError: the file cannot be written.
    """
    rows, labels, has_label = [], [], False
    for name in names:
        inp = _read(os.path.join(out_dir, "input", name + ".png"))
        if inp is None:
            continue
        rec = _read(os.path.join(out_dir, "recon", name + ".png"))
        lab = _read(os.path.join(out_dir, "label", name + ".png"))
        has_label = has_label or lab is not None
        rows.append((inp, rec, lab))
        labels.append(name)
        if len(rows) == max_rows:
            break
    if not rows:
        return None
    titles = ["input", "reconstruction"] + (["label", "|error|"] if has_label else [])
    tiles = []
    for inp, rec, lab in rows:
        row = [inp, rec]
        if has_label:
            row += [lab, abs_error(rec, lab) if (rec is not None and lab is not None) else None]
        tiles.append(row)
    path = os.path.join(out_dir, "grid.png")
    _save(path, compose(tiles, titles, labels, zoom_for(rows[0][0].shape[0])))
    return path


def strip_steps(num_steps: int, limit: int = MAX_FRAMES) -> list[int]:
    """The 0-based sampling steps shown in a ``--record`` strip: at most ``limit``, evenly
    spaced, the first and the last step included.

    >>> strip_steps(100, 5)
    [0, 25, 50, 74, 99]
    >>> strip_steps(3)
    [0, 1, 2]
    """
    if num_steps <= limit:
        return list(range(num_steps))
    return sorted({int(round(k * (num_steps - 1) / (limit - 1))) for k in range(limit)})


def write_strip(path: str, frames: Sequence[tuple[int, np.ndarray]]) -> None:
    """Write a one-row strip of x0_hat frames [(0-based step, (H, W, C) uint8 with C in {1, 3})],
    titled by their step, atomically.

    Raises:
        ValueError: no frames. OSError: the file cannot be written.
    """
    if not frames:
        raise ValueError("write_strip: no frames")
    tiles = [_rgb(f) for _, f in frames]
    _save(path, compose([tiles], [f"step {s}" for s, _ in frames], [""], zoom_for(tiles[0].shape[0])))
