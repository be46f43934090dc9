"""Logging set-up for the command-line job: one line per record on stderr, written through
``tqdm.write`` so that messages do not break the progress bars."""
from __future__ import annotations

import logging
import sys

from tqdm import tqdm

FORMAT = "%(asctime)s [CoDPS] >> %(levelname)s %(message)s"


class TqdmHandler(logging.StreamHandler):
    """A stream handler that prints through ``tqdm.write`` (to stderr)."""

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except (OSError, ValueError):
            self.handleError(record)


def setup_logging(level: int = logging.INFO, tag: str = "") -> logging.Logger:
    """Configure the root logger once (idempotent) and return the ``codps`` logger.

    Records of ``level`` and above go to stderr as ``<time> [CoDPS] >> LEVEL message``, or
    ``[CoDPS <tag>]`` with a ``tag`` (e.g. ``rank 1/2`` under torchrun); a later call with a
    tag updates the format."""
    root = logging.getLogger()
    fmt = FORMAT if not tag else FORMAT.replace("[CoDPS]", f"[CoDPS {tag}]")
    handlers = [h for h in root.handlers if isinstance(h, TqdmHandler)]
    if not handlers:
        handlers = [TqdmHandler()]
        root.addHandler(handlers[0])
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    root.setLevel(level)
    logging.captureWarnings(True)
    return logging.getLogger("codps")


def get_logger(name: str = "codps") -> logging.Logger:
    """The named logger (call :func:`setup_logging` once in the program's entry point)."""
    return logging.getLogger(name)
