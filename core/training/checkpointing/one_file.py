"""The one-file storage: the whole training state in the run folder's checkpoint file, written atomically
(and, for step-level checkpoints, in the background), read without pickle (``weights_only=True``).

A checkpoint is written to a temporary file in the same folder (so the rename cannot cross file
systems), flushed to disk, then renamed over the old one: a crash at any moment leaves either the
previous complete checkpoint or the new complete one, never a half-written file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from clrun import distributed
from clrun.errors import UserError
from clrun.run_folder import RunFolder
from clrun.training.checkpointing.state import TrainState
from clrun.training.checkpointing.writes import BackgroundWriter, save_atomic, snapshot


class OneFile:
    """Checkpoints as one file that rank 0 writes (the other ranks hold the same replicated state)."""

    sharded = False  # its tensors are plain state dicts

    def __init__(self) -> None:
        self.writer = BackgroundWriter(save_atomic)

    def save(self, state: dict[str, Any], tensor_keys: frozenset[str], folder: RunFolder, step: int,
             background: bool = False) -> None:
        """Write ``state`` (rank 0); with ``background``, a copy of it, on the writer's thread."""
        if not distributed.is_main():
            return
        if background:
            self.writer.write(snapshot(state), folder.checkpoint)
        else:
            self.writer.wait()  # never two writes at once
            save_atomic(state, folder.checkpoint)

    def read(self, path: Path, state: TrainState) -> dict[str, Any]:
        """The saved state at ``path``, for ``state`` to load."""
        return load(path)

    def wait(self) -> None:
        """Until a background write is on disk; its error, if it failed."""
        self.writer.wait()

    def close(self) -> None:
        """``wait``, reporting rather than raising a failed write (the run is ending anyway)."""
        self.writer.close()


def latest(folder: RunFolder) -> Path | None:
    """The run folder's checkpoint file, if it has one."""
    return folder.checkpoint if folder.checkpoint.is_file() else None


def load(path: Path, command: str = "--resume") -> dict[str, Any]:
    """A checkpoint's state, read without pickle. ``command`` starts error messages: the option or command
    the path came from."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{command}: no checkpoint at {path}") from None
    except pickle.UnpicklingError as exc:  # torch's message is a page long: one sentence says it
        raise UserError(f"{command}: {path} is not a cl-run checkpoint: it holds Python objects that only unpickling "
                        f"would read, and unpickling a file can run any code in it, so cl-run does not; "
                        f"pass a checkpoint that cl-run wrote") from exc
    except Exception as exc:
        raise UserError(f"{command}: {path} is not a readable cl-run checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not isinstance(state.get("network"), dict):
        raise UserError(f"{command}: {path} is not a cl-run checkpoint (it has no `network` state)")
    return state


def find(run_or_checkpoint: str | Path, command: str = "--resume") -> Path:
    """A checkpoint file from a run folder or a checkpoint path."""
    path = Path(run_or_checkpoint)
    name = RunFolder(path).checkpoint.name
    if path.is_dir():
        path = RunFolder(path).checkpoint
    if not path.is_file():
        raise UserError(f"{command}: no checkpoint at {path} (pass a run folder holding {name}, or the checkpoint file itself)")
    return path
