"""The one place that writes: every file cl-run writes goes through here, and a disk fault is one sentence.

A full disk surfaces from ``torch.save`` as a C++ stack ("enforce fail at inline_container.cc ...
unexpected pos"), a read-only or forbidden folder as a bare ``OSError``. ``writing(path, what)`` turns
each into a ``StorageError`` naming the path, the cause and a fix that fits the command at hand
(``elsewhere``: ``set run.dir ...`` for a new run, ``-o`` for export, eval and report, a copy of the run
folder for ``--resume``). The writers below (``write_atomic``, ``append_text``, ``make_folder``,
``create_exclusive``, ``remove``) leave the previous file in place when they fail, and their clean-up never
raises over the error that explains the failure (``discard``: a read-only file system refuses to unlink
even a file that was never created). ``check_free_space`` refuses to start what could not write its
first checkpoint.

A test (``tests/integration/test_faults.py``'s fault matrix) runs every command of the CLI on a full, a read-only and
a forbidden file system: a command that writes around this module fails it.
"""

from __future__ import annotations

import contextvars
import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

from clrun.errors import UserError

# How much room a checkpoint needs beside the previous one: the new file is complete before the old goes.
HEADROOM = 1.1
# The suffix of the temporary files the atomic writers leave when they are killed (RunFolder removes them).
TEMP_SUFFIX = ".tmp"

# How the command at hand writes elsewhere; ``{place}`` becomes "a larger disk", "a writable folder" or
# "a folder you may write to". Context-local, so a command sets it once for everything it writes.
NEW_RUN = "set run.dir to {place}"
_remedy: contextvars.ContextVar[str] = contextvars.ContextVar("clrun_storage_remedy", default=NEW_RUN)

Content = Union[str, bytes, Callable[[Path], None]]


class StorageError(UserError):
    """A file could not be written (disk full, read-only, no permission); the message names it."""


@contextmanager
def elsewhere(remedy: str) -> Iterator[None]:
    """Within this block, a disk fault's message ends in ``remedy`` (a template with ``{place}``), e.g.
    ``"write the encoder to {place} with -o FILE.safetensors"``."""
    token = _remedy.set(remedy)
    try:
        yield
    finally:
        _remedy.reset(token)


def _fix(place: str) -> str:
    return _remedy.get().format(place=place)


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
        return f"the disk is full ({free_bytes(path) / 1e6:.0f} MB free there); free some space or {_fix('a larger disk')}"
    if code == errno.EROFS:
        return f"the file system is read-only; {_fix('a writable folder')}"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied; {_fix('a folder you may write to')}"
    # torch.save reports a full disk from C++ without an errno: judge by the space left.
    if isinstance(exc, RuntimeError) and free_bytes(path) < 1_000_000:
        return f"the disk is full; free some space or {_fix('a larger disk')}"
    return None


@contextmanager
def writing(path: Path, what: str, kept: str = "") -> Iterator[None]:
    """Re-raise a disk failure while writing ``path`` as a ``StorageError``: ``what`` failed: ``path``:
    cause and fix; ``kept`` says what survived (e.g. the previous checkpoint)."""
    try:
        yield
    except StorageError:
        raise  # an inner write already named its file
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
            f"free some space or {_fix('a larger disk')}"
        )


def temp_path(path: Path) -> Path:
    """Where to write ``path``'s next version before renaming it over ``path``: a unique hidden name in the
    same folder (``os.replace`` is atomic only within one file system). ``RunFolder.remove_temp_files``
    finds what a killed writer left."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def discard(path: Path) -> None:
    """Remove a temporary file if it is there, never raising: this runs while another error (the one that
    says what went wrong) is on its way, and a read-only file system refuses even to unlink a missing file."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


def make_folder(path: Path, what: str) -> Path:
    """``path`` and its parents, created if missing."""
    path = Path(path)
    with writing(path, what):
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, content: Content, what: str = "run folder", kept: str | None = None) -> Path:
    """Write ``content`` (text, bytes, or a function that writes the file at the path it is given) to a
    temporary file in the same folder, flush it to disk and rename it over ``path``: readers, and a crash
    at any moment, see the old file or the whole new one. ``kept`` says what survives a failure (by
    default, the previous version when there is one)."""
    path = Path(path)
    make_folder(path.parent, what)
    if kept is None:
        kept = "the previous version is kept" if path.exists() else ""
    tmp = temp_path(path)
    try:
        with writing(path, what, kept):
            # Created with plain open(), not mkstemp, so the file gets the usual permissions (mkstemp's and
            # safetensors' are owner-only); a writer function that recreates the file gets them back.
            with open(tmp, "xb") as f:
                if not callable(content):
                    f.write(content.encode("utf-8") if isinstance(content, str) else content)
            if callable(content):
                usual = os.stat(tmp).st_mode & 0o777
                content(tmp)
                os.chmod(tmp, usual)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    return path


def append_text(path: Path, text: str, what: str = "log") -> None:
    """Append ``text`` to ``path`` (a log of records, one per line)."""
    with writing(path, what), open(path, "a", encoding="utf-8") as f:
        f.write(text)


def create_exclusive(path: Path, text: str, what: str) -> None:
    """Create ``path`` holding ``text``, only if it does not exist (``O_EXCL``: atomic, also on NFSv3+);
    ``FileExistsError`` when it does."""
    path = Path(path)
    with writing(path, what):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        except BaseException:
            discard(path)
            raise


def remove(path: Path, what: str) -> None:
    """Delete a file if it is there."""
    with writing(path, what):
        Path(path).unlink(missing_ok=True)



def remove_if_empty(folder: Path) -> None:
    """Best effort: delete ``folder`` if it holds nothing (what a command created before it failed)."""
    try:
        Path(folder).rmdir()
    except OSError:
        pass
