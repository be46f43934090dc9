"""Reading the files a user gives (checkpoints, arrays, folders) with one-line messages that
name the file and what was expected: a missing path, a folder where a file is expected (or the
reverse), a truncated or corrupt file, a file of another kind. Every loader of the tool calls
these, so a bad file reads the same wherever it is given.

    state = load_checkpoint("ckpts/mnist32.pt", "model_path")     # weights-only, a dict of tensors
    arr = load_npy("k.npy", "kernel")                              # numeric ndarray, no pickles
    check_file("x.yaml", "task config", "a YAML file")             # raises FileError

All raise :class:`FileError` (a ValueError; ``main.py`` prints it as ``error: ...``, exit 2), or
its subclass :class:`MissingFileError` (also a FileNotFoundError) for a path that does not exist.
"""
from __future__ import annotations

import os
import re
import zipfile
from typing import Any

import numpy as np


class FileError(ValueError):
    """A file or folder given by the user is missing, of the wrong kind, or unreadable (one line)."""


class MissingFileError(FileError, FileNotFoundError):
    """The path does not exist."""


def check_file(path: str, what: str, expect: str = "a file") -> str:
    """Return ``path`` when it is an existing file. Raises MissingFileError ("<what> <path> does
    not exist"), FileError ("<what> <path> is a folder; expected <expect>")."""
    if os.path.isdir(path):
        raise FileError(f"{what} {path} is a folder; expected {expect}")
    if not os.path.exists(path):
        raise MissingFileError(f"{what} {path} does not exist")
    return path


def check_folder(path: str, what: str, expect: str = "a folder") -> str:
    """Return ``path`` when it is an existing folder. Raises MissingFileError, or FileError
    ("<what> <path> is a file; expected <expect>")."""
    if os.path.isfile(path):
        raise FileError(f"{what} {path} is a file; expected {expect}")
    if not os.path.exists(path):
        raise MissingFileError(f"{what} {path} does not exist")
    if not os.path.isdir(path):
        raise FileError(f"{what} {path} is not a folder; expected {expect}")
    return path


def _npy_reason(path: str, exc: BaseException) -> str:
    """Why numpy could not read ``path`` as .npy, without numpy's advice to set ``allow_pickle``
    (unsafe for a file of unknown origin)."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        head = b""
    if head != b"\x93NUMPY":
        return "not a NumPy .npy file (no .npy header; save it with numpy.save)"
    text = " ".join(str(exc).split())
    if "pickle" in text.lower():
        return "it holds Python objects (a pickled object array), not numbers"
    if isinstance(exc, (EOFError,)) or "truncat" in text.lower() or "cannot reshape" in text.lower() \
            or "read" in text.lower():
        return f"truncated or damaged ({text})"
    return text


def load_npy(path: str, what: str) -> np.ndarray:
    """A numeric array from a ``.npy`` file (``allow_pickle=False``).

    Returns:
        the ndarray (bool, integer or float dtype).
    Raises:
        MissingFileError, FileError: a folder, a file that is not .npy (e.g. text), a truncated
        one, an object array, or a non-numeric dtype, each said in one line naming ``what`` and
        ``path`` (never numpy's allow_pickle advice).
    """
    check_file(path, what, "a .npy file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise FileError(f"{what} {path} is not a readable .npy array: {_npy_reason(path, exc)}") from None
    if not isinstance(arr, np.ndarray):
        raise FileError(f"{what} {path} is an .npz archive, not a .npy array")
    if arr.dtype.kind not in "biuf":
        raise FileError(f"{what} {path} must hold a numeric array, got dtype {arr.dtype}")
    return arr


def load_npz(path: str, what: str, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz`` archive (``allow_pickle=False``). Raises MissingFileError, or
    FileError for a folder, a file that is not a zip archive, a damaged / truncated archive, a
    missing key (naming the keys it has) or a pickled entry."""
    check_file(path, what, "an .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise FileError(f"{what} {path} is a .npy array, not an .npz archive of named arrays")
            if key not in f.files:
                raise FileError(f"{what} {path} has no array {key!r} (has: {', '.join(f.files) or 'none'})")
            return f[key]
    except FileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        reason = " ".join(str(exc).split())
        if "pickle" in reason.lower():
            reason = "it holds Python objects (pickled arrays), not numbers"
        raise FileError(f"{what} {path} is not a readable .npz archive (damaged, truncated or another kind of "
                        f"file): {reason or type(exc).__name__}") from None


def _torch_reason(path: str, exc: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed on ``path``, without PyTorch's
    advice to retry with ``weights_only=False``. A torch.save file is a zip archive (``PK``) or,
    in the legacy format, a pickle (``\\x80``); anything else is another kind of file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head == b"\x93NUM":
        return "a NumPy .npy file, not a PyTorch checkpoint (torch.save file)"
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        return "not a PyTorch checkpoint (torch.save file)"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not an allowed global| Please use|\n|$)", text)
    if found:
        return (f"it holds Python objects that a weights-only load refuses ({found.group(1).strip()}); "
                "save the model's state_dict (torch.save(model.state_dict(), path)) instead")
    low = text.lower()
    if any(s in low for s in ("central directory", "failed finding", "pytorchstreamreader", "unexpected eof",
                              "ran out of input", "truncated")):
        return "truncated or damaged (not a complete torch.save file)"
    if "invalid load key" in low or "magic number" in low or "not a zip" in low:
        return "not a PyTorch checkpoint (torch.save file)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "weights_only" in first:
        first = ""
    return f"{type(exc).__name__}{': ' + first if first else ''}"


def load_checkpoint(path: str, what: str = "checkpoint", map_location: Any = "cpu") -> dict:
    """A state_dict from a PyTorch checkpoint, loaded with ``torch.load(weights_only=True)``; a
    dict holding an ``"ema"``, ``"state_dict"`` or ``"model"`` dict is unwrapped.

    Returns:
        {name: tensor}.
    Raises:
        MissingFileError; FileError (one line naming ``what`` and ``path``) for a folder, a
        truncated or corrupt file, a file of another kind (text, .npy, a pickle of objects), or
        one that holds no mapping of tensors.
    """
    import torch
    check_file(path, what, "a checkpoint file (.pt / .pth)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types; all become one line
        raise FileError(f"{what} {path} is not a loadable weights-only checkpoint: {_torch_reason(path, exc)}") from None
    if isinstance(state, dict):
        for key in ("ema", "state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FileError(f"{what} {path} does not hold a state_dict (a mapping of names to tensors), "
                        f"got {type(state).__name__}")
    return state
