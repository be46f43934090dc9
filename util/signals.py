"""SIGTERM handled like Ctrl-C: a terminated run stops at the next Python instruction through
the same path as an interrupted one (rows and summary written, status ``interrupted``), and
the command exits with 143 (128 + SIGTERM) instead of 130."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (a KeyboardInterrupt, so
    every ``except KeyboardInterrupt`` cleanup runs)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"terminated by signal {signum}")


@contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the previous
    handler is restored after it. Outside the main thread (where Python cannot set handlers)
    it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(exc: KeyboardInterrupt) -> int:
    """143 for :class:`Terminated` (SIGTERM), 130 for a plain KeyboardInterrupt (SIGINT)."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else 128 + signal.SIGINT
