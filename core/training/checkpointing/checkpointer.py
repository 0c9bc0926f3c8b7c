"""A run's checkpoints: its training state (``state.TrainState``) in the storage its recipe chose, one file
(``one_file``) or, with ``train.strategy: fsdp``, a sharded one (``sharded``) that loads on any number of
processes. The only module that imports a storage: the loop saves through a ``Checkpointer``, opening a run
restores through one, and ``cl-run eval`` and ``export`` read through ``find`` and ``load``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from clrun.run_folder import RunFolder
from clrun.training.checkpointing import one_file, sharded
from clrun.training.checkpointing.state import Position, Restoring, TrainState
from clrun.training.run import Run

Storage = Union[one_file.OneFile, sharded.Sharded]


class Checkpointer:
    """Saves and restores ``run``'s training state (with the state of the stateful ``callbacks``), in the
    storage chosen once, from the recipe, when the run opens."""

    def __init__(self, run: Run, callbacks: list = ()) -> None:
        self.run = run
        self.state = TrainState(run, callbacks)
        self.storage: Storage = sharded.Sharded() if run.recipe.train.strategy == "fsdp" else one_file.OneFile()

    def save(self, position: Optional[Position] = None, background: bool = False) -> bool:
        """Write the run's checkpoint, unless a callback holds checkpoints (the state may be collapsing);
        returns whether it was written. ``position``: where in the current epoch the run is, for a checkpoint
        written mid-epoch. ``background``: the state is copied and written while training goes on (the
        one-file storage; a sharded one is written at once). Every rank calls it."""
        self.state.in_epoch.now = position
        saved = self.state.state_dict(self.storage.sharded)  # gathers every rank's random streams
        if self.run.checkpoint_hold is not None:
            return False
        self.storage.save(saved, self.state.tensor_keys, self.run.folder, self.run.step, background)
        self.run.checkpoint_epoch = self.run.epoch
        return True

    def restore(self, path: Path, changed: frozenset[str] = frozenset()) -> None:
        """Continue the run from the checkpoint at ``path`` (a file, or a sharded checkpoint's folder, loaded on
        this run's processes whatever their number); ``changed``: the recipe sections a resume was allowed to
        change (``policy``), whose new settings win over the saved ones. A checkpoint that does not fit the
        recipe is a user error naming the part, never a raw size-mismatch traceback."""
        storage = storage_of(path)  # the checkpoint's own format (a resume may have changed train.strategy)
        saved = storage.read(path, self.state)
        self.state.load_state_dict(saved, Restoring(str(path), changed, storage.sharded))

    def position_in_epoch(self) -> Position:
        """Where the current epoch starts: at its first batch, or (once, after a restore) at the place a
        mid-epoch checkpoint was written."""
        resumed, self.state.in_epoch.resumed = self.state.in_epoch.resumed, None
        return resumed or Position()

    def continue_streams(self) -> None:
        """Set the random streams a mid-epoch checkpoint saved: call it once the epoch's loader iterator is
        made (it draws a seed from the global stream, and the checkpoint was written after that draw)."""
        self.state.streams.continue_streams()

    @property
    def latest(self) -> Optional[Path]:
        """The run folder's latest complete checkpoint, if any."""
        return latest(self.run.folder)

    def wait(self) -> None:
        """Until a background write is on disk; its error, if it failed."""
        self.storage.wait()

    def close(self) -> None:
        """``wait`` for a run that is ending anyway: a failed write is reported, not raised over the error
        that ends the run."""
        self.storage.close()


def storage_of(path: Path) -> Storage:
    """The storage that wrote the checkpoint at ``path``: a sharded checkpoint is a folder."""
    return sharded.Sharded() if path.is_dir() else one_file.OneFile()


def latest(folder: RunFolder) -> Optional[Path]:
    """The run folder's checkpoint: its one file, or a sharded run's latest complete one."""
    return one_file.latest(folder) or sharded.latest(folder)


def find(run_or_checkpoint: str | Path, command: str = "--resume") -> Path:
    """A checkpoint (a file, or a sharded checkpoint's folder) from a run folder or a checkpoint path.
    ``command`` starts error messages: the option or command the path came from."""
    path = Path(run_or_checkpoint)
    if path.is_dir() and sharded.is_complete(path):
        return path
    if path.is_dir() and (found := sharded.latest(RunFolder(path))) is not None:
        return found
    return one_file.find(path, command)


def load(path: Path, command: str = "--resume", parts: Optional[tuple[str, ...]] = None) -> dict[str, Any]:
    """A checkpoint's whole state, read without pickle; a sharded one gathered into this process, with only
    the tensor ``parts`` named (``("network",)`` for ``cl-run eval`` and ``export``) when given."""
    if path.is_dir():
        return sharded.load_whole(path, command, parts)
    return one_file.load(path, command)
