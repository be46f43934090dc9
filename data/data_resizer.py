"""Prepare a test folder once: centre-crop every png/jpg/jpeg image under a folder to a square
and resize it to 256 x 256 (or ``--size``), as the paper does for its FFHQ test images.

    python -m data.data_resizer --src path/to/ffhq/00000 --dst samples/ffhq --size 256

Files keep their relative paths (as .png). Unreadable files are skipped with a warning;
existing outputs are kept unless ``--overwrite``. Exit status 2 when the source has no images.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import sys

from PIL import Image, UnidentifiedImageError

from data.dataloader import IMAGE_EXTENSIONS, center_crop_resize
from util.image_io import atomic_write_bytes

log = logging.getLogger(__name__)


def resize_folder(src: str, dst: str, size: int = 256, overwrite: bool = False) -> tuple[int, int]:
    """Centre-crop and resize every image under ``src`` into ``dst`` as PNG (relative paths kept).

    Returns (written, skipped unreadable). Raises FileNotFoundError when ``src`` is not a folder
    or holds no images."""
    if not os.path.isdir(src):
        raise FileNotFoundError(f"source folder {src!r} does not exist")
    written = skipped = found = 0
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            found += 1
            rel = os.path.relpath(os.path.join(folder, name), src)
            out = os.path.join(dst, os.path.splitext(rel)[0] + ".png")
            if os.path.exists(out) and not overwrite:
                continue
            try:
                with Image.open(os.path.join(folder, name)) as img:
                    img = center_crop_resize(img.convert("RGB"), size)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                log.warning("skipping %s: %s", rel, exc)
                skipped += 1
                continue
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            atomic_write_bytes(out, buf.getvalue())
            written += 1
    if not found:
        raise FileNotFoundError(f"source folder {src!r} holds no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images")
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="folder of png/jpg/jpeg images (searched recursively)")
    parser.add_argument("--dst", required=True, help="output folder")
    parser.add_argument("--size", type=int, default=256, help="output side in pixels (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.size <= 0:
        print(f"error: --size must be positive, got {args.size}", file=sys.stderr)
        return 2
    try:
        written, skipped = resize_folder(args.src, args.dst, args.size, args.overwrite)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("wrote %d images to %s (%d unreadable skipped)", written, args.dst, skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
