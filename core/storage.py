"""Disk failures as one clear sentence: what could not be written, where, why, and what to do.

A full disk surfaces from ``torch.save`` as a C++ stack ("enforce fail at inline_container.cc ...
unexpected pos"), a read-only run folder as a bare ``OSError``. ``writing(path, what)`` turns both into a
``StorageError`` naming the path, the cause and the fix; the atomic writers leave the previous file in
place, so the message can say so. ``check_free_space`` refuses to start a run that could not write its
first checkpoint.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from clrun.errors import UserError

# How much room a checkpoint needs beside the previous one: the new file is complete before the old goes.
HEADROOM = 1.1


class StorageError(UserError):
    """A file could not be written (disk full, read-only, no permission); the message names it."""


def _existing(path: Path) -> Path:
    """The nearest existing folder at or above ``path`` (a run folder may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(_existing(path)).free


# Errors that carry no errno (safetensors' Rust IoError, torch's C++ writer) still name the OS error.
_MESSAGES = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
             "Permission denied": errno.EACCES}


def _cause(exc: BaseException, path: Path) -> str | None:
    code = getattr(exc, "errno", None)
    if code is None:
        code = next((c for text, c in _MESSAGES.items() if text in str(exc)), None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({free_bytes(path) / 1e6:.0f} MB free there); free some space or set run.dir to a larger disk"
    if code == errno.EROFS:
        return "the file system is read-only; set run.dir to a writable folder"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; set run.dir to a folder you may write to"
    # torch.save reports a full disk from C++ without an errno: judge by the space left.
    if isinstance(exc, RuntimeError) and free_bytes(path) < 1_000_000:
        return "the disk is full; free some space or set run.dir to a larger disk"
    return None


@contextmanager
def writing(path: Path, what: str, kept: str = "") -> Iterator[None]:
    """Re-raise a disk failure while writing ``path`` as a ``StorageError``: ``what`` failed: ``path``:
    cause and fix; ``kept`` says what survived (e.g. the previous checkpoint)."""
    try:
        yield
    except Exception as exc:
        cause = _cause(exc, Path(path))
        if cause is None:
            raise
        raise StorageError(f"{what}: cannot write {path}: {cause}{'; ' + kept if kept else ''}") from None


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start when ``folder``'s disk cannot hold ``needed`` bytes (with headroom)."""
    free = free_bytes(folder)
    if free < needed * HEADROOM:
        raise StorageError(
            f"{what} needs about {needed / 1e6:.0f} MB in {folder} but only {free / 1e6:.0f} MB are free there; "
            f"free some space or set run.dir to a larger disk"
        )
