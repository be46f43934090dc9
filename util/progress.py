"""One progress report for a whole run (all batches): a tqdm bar with the run's ETA when
stderr is a terminal, plain log lines otherwise (log files get no carriage returns)."""
from __future__ import annotations

import logging
import sys
import time
from typing import IO

from tqdm import tqdm

log = logging.getLogger(__name__)

#: Seconds between two plain progress lines within a batch (one is also written after each batch).
LINE_INTERVAL_S = 60.0


def _hms(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RunProgress:
    """Progress of ``images`` images of ``steps`` sampling steps each.

    Call :meth:`advance` with the number of images in the batch after every step, and
    :meth:`images_done` after every batch; :meth:`close` at the end. The ETA is the run's (all
    remaining steps of all images), from the mean time per image-step so far.

    Args:
        images: images to process in this run (of this process under torchrun).
        steps: sampling steps per image.
        enabled: False shows nothing.
        stream: where the bar goes (default stderr); a non-terminal gets log lines instead.
    """

    def __init__(self, images: int, steps: int, enabled: bool = True, stream: IO | None = None):
        self.images, self.steps = int(images), max(1, int(steps))
        self.total = self.images * self.steps
        self.done_steps = 0
        self.done_images = 0
        self.enabled = enabled and self.images > 0
        stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last_line = self.start
        self.bar = None
        if self.enabled and self.tty:
            self.bar = tqdm(total=self.total, file=stream, dynamic_ncols=True, desc=self._images_text(),
                            unit="step", bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def _images_text(self) -> str:
        return f"run: images {self.done_images}/{self.images}"

    def eta(self) -> float | None:
        """Seconds left for the run, from the time per image-step so far (None before any step)."""
        if self.done_steps == 0:
            return None
        return (time.monotonic() - self.start) / self.done_steps * (self.total - self.done_steps)

    def line(self) -> str:
        """``progress: 3/16 images (19%), 0:00:12 elapsed, ETA 0:00:51``."""
        eta = self.eta()
        pct = 100.0 * self.done_steps / self.total if self.total else 100.0
        return (f"progress: {self.done_images}/{self.images} images ({pct:.0f}%), "
                f"{_hms(time.monotonic() - self.start)} elapsed, ETA {'?' if eta is None else _hms(eta)}")

    def advance(self, n_images: int) -> None:
        """One sampling step done for a batch of ``n_images``."""
        if not self.enabled:
            return
        self.done_steps = min(self.total, self.done_steps + int(n_images))
        if self.bar is not None:
            self.bar.update(int(n_images))
        elif time.monotonic() - self.last_line >= LINE_INTERVAL_S:
            self._log()

    def images_done(self, n_images: int) -> None:
        """A batch of ``n_images`` finished (its steps count as done even if it stopped early)."""
        if not self.enabled:
            return
        self.done_images = min(self.images, self.done_images + int(n_images))
        target = self.done_images * self.steps
        if self.bar is not None:
            if target > self.done_steps:
                self.bar.update(target - self.done_steps)
            self.bar.set_description_str(self._images_text())
        self.done_steps = max(self.done_steps, target)
        if self.bar is None:
            self._log()

    def _log(self) -> None:
        self.last_line = time.monotonic()
        log.info("%s", self.line())

    def close(self) -> None:
        """Remove the bar (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
