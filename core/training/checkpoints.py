"""Which checkpoint a run writes and reads: one file (``clrun.training.checkpoint``) or, for a run with
``train.strategy: fsdp``, a sharded one (``clrun.training.sharded_checkpoint``) that loads on any number of
processes. The loop, resumes, ``cl-run eval`` and ``export`` go through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from clrun.run_folder import RunFolder
from clrun.training import checkpoint, sharded_checkpoint


def save(run, callbacks: list = (), position: Optional[dict[str, Any]] = None,
         writer: Optional[checkpoint.BackgroundWriter] = None) -> bool:
    """The run's checkpoint, in its strategy's format (a sharded one is written synchronously, each process
    its own shards; ``writer`` applies to the one-file format)."""
    if run.recipe.train.strategy == "fsdp":
        return sharded_checkpoint.save(run, callbacks, position)
    return checkpoint.save(run, callbacks, position, writer)


def latest(folder: RunFolder) -> Optional[Path]:
    """The run folder's checkpoint: its one file, or a sharded run's latest complete one."""
    if folder.checkpoint.is_file():
        return folder.checkpoint
    return sharded_checkpoint.latest(folder)


def find(run_or_checkpoint: str | Path, command: str = "--resume") -> Path:
    """A checkpoint (a file, or a sharded checkpoint's folder) from a run folder or a checkpoint path."""
    path = Path(run_or_checkpoint)
    if path.is_dir() and sharded_checkpoint.is_complete(path):
        return path
    if path.is_dir() and (found := sharded_checkpoint.latest(RunFolder(path))) is not None:
        return found
    return checkpoint.find(path, command)


def load(path: Path, command: str = "--resume") -> dict[str, Any]:
    """A checkpoint's state, read without pickle; a sharded one gathered whole into this process."""
    if path.is_dir():
        return sharded_checkpoint.load_whole(path, command)
    return checkpoint.load(path, command)


def restore(run, saved: Path, callbacks: list = (), changed: frozenset[str] = frozenset()) -> None:
    """Continue ``run`` from ``saved``; a sharded checkpoint is loaded on this run's processes, whatever their number."""
    if saved.is_dir():
        sharded_checkpoint.restore(run, saved, callbacks, changed)
    else:
        checkpoint.restore(run, checkpoint.load(saved), saved, callbacks, changed)
