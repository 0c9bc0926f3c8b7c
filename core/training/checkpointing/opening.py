"""Opening a run: a new run folder, or a resumed run's folder with its checkpoint restored and its
recipe's changes checked (``policy``); either way with the ``Checkpointer`` that saves the run, its
storage chosen here, once. Rank 0 holds the folder's lock while the run is open."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from clrun import distributed
from clrun.errors import UserError
from clrun.recipe import load_recipe, resolved
from clrun.run_folder import RunFolder
from clrun.run_lock import RunLock
from clrun.storage import NEW_RUN, check_free_space, elsewhere
from clrun.training.checkpointing import restart
from clrun.training.checkpointing.checkpointer import Checkpointer, find
from clrun.training.checkpointing.policy import changes, check_allowed, recorded, training_changes
from clrun.training.checkpointing.state import expected_size
from clrun.training.run import Run
from clrun.training.seeding import seed_augmentations
from clrun.training.setup import Setup

# A resume cannot move its run folder (run.dir only names where new runs go): the fix is a copy of it.
RESUME_ELSEWHERE = "copy the run folder to {place} and resume the copy"


@contextmanager
def open_run(setup: Setup, resume: str | Path | None, callbacks: list,
             allow_changes: bool) -> Iterator[tuple[Run, Checkpointer]]:
    """The run and its checkpointer (``resume``: what ``restart.to_resume`` found), in a new run folder with
    the resolved recipe (rank 0 creates it,
    every rank learns its path) or in the resumed run's folder with the checkpoint restored into the
    freshly built parts and the logs cut back to the checkpoint. Rank 0 holds the folder's lock while
    the run is open."""
    recipe, main = setup.recipe, distributed.is_main()
    saved = find(resume) if resume else None
    with elsewhere(RESUME_ELSEWHERE if saved else NEW_RUN):
        folder = RunFolder.of_checkpoint(saved) if saved else None
        if main:  # before anything is written: a run that cannot checkpoint does not start
            check_free_space(folder.path if saved else Path(recipe.run.dir), expected_size(setup.parts),
                             "the run's checkpoint")
        if saved is None:
            name = restart.run_name(recipe)
            folder = distributed.broadcast_object(RunFolder.create(recipe.run.dir, name) if main else None)
        with locked(folder, main):
            run = Run(recipe, setup.parts, setup.device, folder, setup.steps_per_epoch)
            checkpointer = Checkpointer(run, callbacks)
            if saved:
                continue_run(checkpointer, saved, allow_changes)
            else:
                if main:
                    folder.write_recipe(resolved(recipe))
                    if setup.parts.init is not None:
                        folder.write_init(setup.parts.init.record())
                    restart.record_launch(folder)
                seed_augmentations(recipe.seed)
            yield run, checkpointer


@contextmanager
def locked(folder: RunFolder, main: bool) -> Iterator[None]:
    """Rank 0 holds the folder's lock (one writer per run folder) within this block."""
    lock = RunLock(folder.lock)
    if main:
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def with_todays_defaults(folder: RunFolder, trained_with: dict) -> dict:
    """The run's recipe resolved as this release resolves it: a setting added since the run started (a new
    section, a new option) then holds its default on both sides and is not a change. A recipe this release
    cannot read is compared as written (its problems show as differences)."""
    try:
        return resolved(load_recipe(folder.recipe))
    except UserError:
        return trained_with


def continue_run(checkpointer: Checkpointer, saved: Path, allow_changes: bool) -> None:
    """Restore the checkpoint, after checking what the recipe changes (``policy``); cut the logs back to
    the checkpoint (what a killed run wrote after it is written again from here on)."""
    run = checkpointer.run
    folder, new, trained_with = run.folder, resolved(run.recipe), run.folder.read_recipe()
    if trained_with is None:
        raise UserError(f"--resume: {folder.recipe} is missing or not a recipe: a run folder keeps the recipe its "
                        f"checkpoints were trained with; restore that file, or start a new run")
    found = changes(with_todays_defaults(folder, trained_with), new)
    check_allowed(found, allow_changes, str(saved))
    changed = frozenset(c.section for c in training_changes(found))
    checkpointer.restore(saved, changed)
    if not distributed.is_main():
        return
    folder.remove_temp_files()
    folder.drop_records_after(run.epoch, run.step)
    if noted := recorded(found):
        folder.append_resume({"epoch": run.epoch, "step": run.step, "allowed": allow_changes,
                              "changes": [{"key": c.key, "was": c.was, "now": c.now} for c in noted]})
        folder.write_recipe(new)  # the folder's recipe describes the training from here on
        print(f"cl-run: resuming at step {run.step} with {len(noted)} changed setting(s): "
              + "; ".join(c.describe() for c in noted), flush=True)
