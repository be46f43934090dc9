"""The output folder of a run: an exclusive lock (two runs never write into one folder at once),
the files a run owns (cleared by ``--overwrite``), and one-line messages for filesystem errors
on the output side (an uncreatable path, a full disk, a read-only folder).

The lock is ``fcntl.flock`` on ``<out_dir>/.lock``, a small file holding the owner's pid, host
and start time. The kernel drops a flock when its process dies, so a lock left by a killed run
is stale by construction and is simply taken over; the file itself is removed on release.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import time
from typing import Iterable

LOCK_NAME = ".lock"


class OutputFolderError(Exception):
    """The output folder cannot be used (locked by another run, not creatable, not writable).
    The message is one line for the user (``main.py`` prints it after ``error:``, exit 2)."""


def describe_os_error(exc: OSError, what: str = "cannot write the outputs") -> str:
    """One line for a filesystem error on the output side, e.g. ``cannot write the outputs:
    no space left on device (ENOSPC) at results/x/recon/00001.png``; a path through a file
    (ENOTDIR, e.g. ``--save_dir`` naming a file) names that file."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    if exc.errno == errno.ENOTDIR and exc.filename:   # a file where a folder of the path should be: name it
        part = os.path.abspath(str(exc.filename))
        while part and not os.path.isfile(part) and os.path.dirname(part) != part:
            part = os.path.dirname(part)
        if os.path.isfile(part):
            return f"{what}: {part} is a file, not a folder (ENOTDIR); give a folder path"
    reason = (exc.strerror or str(exc) or type(exc).__name__).strip()
    reason = reason[0].lower() + reason[1:] if reason else reason
    where = exc.filename if exc.filename is not None else ""
    return " ".join(f"{what}: {reason}{f' ({name})' if name else ''}{f' at {where}' if where else ''}".split())


def _missing_parents(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would create, deepest first."""
    out = []
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


class OutputLock:
    """Exclusive lock on an output folder for the lifetime of one run.

    >>> import tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "run")
    >>> first = OutputLock(folder).acquire()
    >>> try:
    ...     OutputLock(folder).acquire()
    ... except OutputFolderError as exc:
    ...     print(str(exc).split(" (")[0])
    ... finally:
    ...     first.release()
    another run is writing into this output folder
    >>> os.path.exists(folder)   # created by the lock and empty at release: removed again
    False
    """

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_NAME)
        self._fd: int | None = None
        self._created: list[str] = []

    def acquire(self) -> "OutputLock":
        """Create the folder if needed and take the lock; returns self.

        Raises OutputFolderError when another live process holds the lock (naming its pid,
        host and start time) or when the folder cannot be created or written (one line)."""
        created = _missing_parents(self.out_dir)
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as exc:
            raise OutputFolderError(describe_os_error(exc, f"cannot create the output folder {self.out_dir}")) from exc
        self._created = created
        for _ in range(100):   # the holder may unlink the file between our open and our flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                self._remove_created()
                raise OutputFolderError(describe_os_error(exc, f"cannot write into the output folder "
                                                               f"{self.out_dir}")) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = self._read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    self._remove_created()
                    raise OutputFolderError(
                        f"another run is writing into this output folder ({holder or 'holder unknown'}): "
                        f"{self.out_dir}; wait for it to finish or use another --save_dir") from exc
                self._remove_created()
                raise OutputFolderError(describe_os_error(exc, f"cannot lock the output folder {self.out_dir}")) \
                    from exc
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:   # we locked a file its holder had just removed: try again
                os.close(fd)
                continue
            self._fd = fd
            break
        else:
            raise OutputFolderError(f"cannot lock the output folder {self.out_dir}")
        info = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, info.encode("utf-8"))
        except OSError as exc:
            self.release()
            raise OutputFolderError(describe_os_error(exc, f"cannot write into the output folder "
                                                           f"{self.out_dir}")) from exc
        return self

    @staticmethod
    def _read_holder(fd: int) -> str:
        try:
            return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _remove_created(self) -> None:
        """Remove the folders this lock created, if they are (still) empty."""
        for folder in self._created:
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._created = []

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent); folders the lock created and
        that stayed empty are removed again, so a run that failed early leaves nothing."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clear_owned(out_dir: str, folders: Iterable[str], files: Iterable[str], patterns: Iterable[str] = ()) -> int:
    """Delete what a run owns in ``out_dir`` (for ``--overwrite``): the ``folders`` (whole
    subfolders, e.g. recon/), the ``files`` (e.g. metrics.csv) and files whose names match one of
    the glob ``patterns`` (e.g. ``metrics.rank*.csv``); anything else stays. Returns how many
    entries were removed. Raises OSError."""
    import fnmatch
    removed = 0
    for sub in folders:
        path = os.path.join(out_dir, sub)
        if os.path.isdir(path):
            shutil.rmtree(path)
            removed += 1
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    for name in names:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path) and (name in files or any(fnmatch.fnmatch(name, p) for p in patterns)):
            os.remove(path)
            removed += 1
    return removed
