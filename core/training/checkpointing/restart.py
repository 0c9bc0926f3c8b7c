"""Continuing a run by itself when it is started again: torchrun's restarts (``--max-restarts``, after a
worker or node failed) and a cluster scheduler's requeue.

``train.auto_resume``:

* unset (the default): a process that torchrun restarted (``TORCHELASTIC_RESTART_COUNT`` > 0) resumes
  the run folder that the same torchrun job started (its ``RunFolder.launch`` file holds the job's
  ``TORCHELASTIC_RUN_ID``), from its latest checkpoint. A first start always starts a new run.
* ``true``: any start resumes the newest checkpoint among the runs of this name in ``run.dir``
  (``NAME``, ``NAME-2``...), whichever job wrote it; a scheduler that requeues the whole job (a new
  torchrun, a new job id) continues the run this way. With no checkpoint yet, a new run starts.
* ``false``: every start is a new run (``--resume`` still continues one).

Rank 0 decides and tells the others, so every process continues the same folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

from clrun import distributed
from clrun.recipe import Recipe
from clrun.run_folder import RunFolder
from clrun.storage import write_atomic
from clrun.training.checkpointing.checkpointer import latest

RUN_ID = "TORCHELASTIC_RUN_ID"
RESTARTS = "TORCHELASTIC_RESTART_COUNT"


def restart_count() -> int:
    """How many times torchrun has restarted this job's processes (0 outside torchrun)."""
    return int(os.environ.get(RESTARTS, "0") or 0)


def run_name(recipe: Recipe) -> str:
    return recipe.run.name or Path(recipe.source).stem


def to_resume(recipe: Recipe, resume: str | Path | None) -> str | Path | None:
    """What a start continues: the ``--resume`` given, else the run's own latest checkpoint when this start
    restarts it (``checkpoint_to_resume``; announced on the console), else None: a new run."""
    if resume:
        return resume
    found = checkpoint_to_resume(recipe)
    if found is not None and distributed.is_main():
        print(f"cl-run: {why(recipe)}: resuming {found}", flush=True)
    return found


def checkpoint_to_resume(recipe: Recipe) -> Optional[Path]:
    """The checkpoint this start continues from, or None for a new run (the same answer on every rank)."""
    return distributed.broadcast_object(_find(recipe) if distributed.is_main() else None)


def _find(recipe: Recipe) -> Optional[Path]:
    setting = recipe.train.auto_resume
    if setting is False or (setting is None and restart_count() == 0):
        return None
    job = None if setting else os.environ.get(RUN_ID)
    found = [saved for folder in runs_named(Path(recipe.run.dir), run_name(recipe))
             if (saved := latest(folder)) is not None and (job is None or launched_by(folder) == job)]
    return max(found, key=lambda path: path.stat().st_mtime_ns, default=None)


def why(recipe: Recipe) -> str:
    """Why this start continues a run, for the console."""
    if recipe.train.auto_resume:
        return "train.auto_resume is on"
    return f"restarted by torchrun (restart {restart_count()})"


def runs_named(root: Path, name: str) -> list[RunFolder]:
    """The run folders ``RunFolder.create`` makes for ``name`` in ``root``: ``name``, ``name-2``, ..."""
    pattern = re.compile(rf"{re.escape(name)}(-\d+)?")
    if not root.is_dir():
        return []
    return [RunFolder(p) for p in sorted(root.iterdir()) if p.is_dir() and pattern.fullmatch(p.name)]


def record_launch(folder: RunFolder) -> None:
    """Note which torchrun job started the run in its folder (nothing outside torchrun)."""
    if job := os.environ.get(RUN_ID):
        write_atomic(folder.launch, json.dumps({"torchelastic_run_id": job}) + "\n")


def launched_by(folder: RunFolder) -> Optional[str]:
    try:
        return json.loads(folder.launch.read_text(encoding="utf-8")).get("torchelastic_run_id")
    except (OSError, ValueError, AttributeError):
        return None
