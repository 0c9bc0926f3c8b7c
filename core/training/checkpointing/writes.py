"""Writing a state file: atomically (``save_atomic``), and on a thread while the training goes on
(``BackgroundWriter``), which then pays only for a copy of the tensors (``snapshot``), not for the
serialization and the disk."""

from __future__ import annotations

import contextvars
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from clrun.storage import write_atomic


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save(state)`` to ``path`` through a temporary file renamed over it: ``path`` is never half-written."""
    kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint was written yet"
    write_atomic(path, lambda tmp: torch.save(state, tmp), "checkpoint", kept)


def snapshot(value: Any) -> Any:
    """``value`` with every tensor copied and every container rebuilt: what a background write may hold
    while the training goes on changing the live weights and optimizer moments in place."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


class BackgroundWriter:
    """Runs ``write(state, path)`` on a thread, one write at a time. A failed write is raised by the next
    ``write`` or ``wait``: the previous checkpoint is then still on disk (the writes are atomic)."""

    def __init__(self, write: Callable[[dict[str, Any], Path], None]) -> None:
        self._save = write
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, state: dict[str, Any], path: Path) -> None:
        self.wait()
        # In the caller's context: a failed write's message then gives the fix that fits the command.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._write, state, path), name="clrun-checkpoint")
        self._thread.start()

    def _write(self, state: dict[str, Any], path: Path) -> None:
        try:
            self._save(state, path)
        except BaseException as exc:  # raised in the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Until the write under way is on disk; its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """``wait`` for a run that is ending anyway: a failed write is reported, not raised over the
        error that ends the run."""
        try:
            self.wait()
        except BaseException as exc:
            print(f"cl-run: a step-level checkpoint was not written: {exc}", file=sys.stderr, flush=True)
