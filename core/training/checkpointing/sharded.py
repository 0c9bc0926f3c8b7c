"""The sharded storage, for a run with ``train.strategy: fsdp``, through ``torch.distributed.checkpoint``
(DCP): every process writes its own shards of the tensor parts (network, target, loss, optimizer;
``StatePart.tensors``), and a checkpoint loads on any number of processes, one included (DCP reshards
while loading). The rest of the state (epoch, step, schedule, GradScaler, callbacks, the place in the
epoch, every process's random streams) is a small file that rank 0 writes next to the shards.

Layout, in the run folder's ``RunFolder.sharded_checkpoint`` folder: one sub-folder per checkpoint and a
``latest`` file naming the complete one. A new checkpoint is written into a new sub-folder; only when
every process has finished writing does rank 0 replace ``latest`` (atomically) and delete the older
sub-folders, so a crash at any moment leaves the previous complete checkpoint in place.
"""

from __future__ import annotations

import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from clrun import distributed
from clrun.errors import UserError
from clrun.run_folder import RunFolder
from clrun.storage import write_atomic, writing
from clrun.training.checkpointing.state import REFIT, TrainState
from clrun.training.checkpointing.writes import save_atomic
from clrun.training.parallel import compat

LATEST = "latest"
REST = "rest.pt"  # everything but the sharded tensors


class Sharded:
    """Checkpoints as DCP shards, every process its own, written synchronously (each process writes only
    its shards, so there is little to wait for)."""

    sharded = True  # its tensors are DCP's state dicts

    def save(self, state: dict[str, Any], tensor_keys: frozenset[str], folder: RunFolder, step: int,
             background: bool = False) -> None:
        """Write ``state`` into a new checkpoint folder (every process calls it), then point ``latest`` at it."""
        root = folder.sharded_checkpoint
        name = distributed.broadcast_object(f"step-{step:09d}-{uuid.uuid4().hex[:8]}")
        kept = "the previous checkpoint is kept" if latest(folder) else "no checkpoint was written yet"
        try:
            write_shards(state, tensor_keys, root / name, kept)
        except BaseException:
            if distributed.is_main():  # no half-written checkpoint stays beside the complete one
                shutil.rmtree(root / name, ignore_errors=True)
            raise
        # dcp.save returns on rank 0 only after every process's shards are written: `latest` may point at them.
        if distributed.is_main():
            write_atomic(root / LATEST, name + "\n", "checkpoint")
            for old in root.iterdir():
                if old.is_dir() and old.name != name:
                    shutil.rmtree(old, ignore_errors=True)

    def read(self, path: Path, state: TrainState) -> dict[str, Any]:
        """The checkpoint at ``path`` loaded on this run's processes, whatever their number: ``state``'s live
        tensors filled in place with their shards (those the checkpoint has), and the rest of the state."""
        import torch.distributed.checkpoint as dcp

        saved_keys = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
        tensors = saved_part(state.sharded_tensors(), saved_keys)  # a whole part missing: the part says why
        try:
            with one_process_is_fine():
                dcp.load(tensors, checkpoint_id=str(path))
        except (RuntimeError, ValueError, KeyError) as exc:
            detail = " ".join(str(exc).split())[:500]
            raise UserError(f"--resume: {path} does not fit this recipe ({detail}); {REFIT}") from None
        return {**torch.load(path / REST, map_location="cpu", weights_only=True), **tensors}

    def wait(self) -> None:
        """Nothing: its writes are synchronous."""

    def close(self) -> None:
        """Nothing: its writes are synchronous."""


def saved_part(live: dict[str, Any], saved_keys: set[str], prefix: str = "") -> dict[str, Any]:
    """The entries of ``live`` (nested dicts, flattened by DCP into dotted keys) that the checkpoint holds.

    A live optimizer's state dict has an entry for every parameter (DCP's ``get_optimizer_state_dict``
    initializes them), while the checkpoint has none for a parameter that had taken no step yet (a group
    frozen for the first epochs by the recipe's params.groups): such entries are left out of the load,
    and the parameter starts its moments afresh, as it would have without the checkpoint."""
    kept = {}
    for key, value in live.items():
        name = f"{prefix}{key}"
        if not any(k == name or k.startswith(name + ".") for k in saved_keys):
            continue
        kept[key] = saved_part(value, saved_keys, name + ".") if isinstance(value, dict) else value
    return kept


def write_shards(state: dict[str, Any], tensor_keys: frozenset[str], folder: Path, kept: str) -> None:
    """Every process's shards and rank 0's rest of the state, into the new checkpoint's ``folder``."""
    import torch.distributed.checkpoint as dcp

    with writing(folder, "checkpoint", kept), one_process_is_fine():
        # Per-process tensors that are not sharded (BatchNorm statistics) are saved from rank 0, as a
        # replicated run's checkpoint and the exported encoder have them.
        dcp.save({k: v for k, v in state.items() if k in tensor_keys}, checkpoint_id=str(folder),
                 planner=compat.dcp_save_planner_lowest_rank())
        if distributed.is_main():
            save_atomic({k: v for k, v in state.items() if k not in tensor_keys}, folder / REST)


@contextmanager
def one_process_is_fine() -> Iterator[None]:
    """DCP warns that it "assumes the intent" of a single process when no process group runs: here that is
    the intent (a sharded recipe trained, or resumed, on one process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a sharded checkpoint's own folder, completely written."""
    return (path / REST).is_file()


def latest(folder: RunFolder) -> Optional[Path]:
    """The complete sharded checkpoint of ``folder``, if any."""
    pointer = folder.sharded_checkpoint / LATEST
    if not pointer.is_file():
        return None
    path = folder.sharded_checkpoint / pointer.read_text(encoding="utf-8").strip()
    return path if is_complete(path) else None


def load_whole(path: Path, command: str, parts: Optional[tuple[str, ...]] = None) -> dict[str, Any]:
    """A sharded checkpoint gathered into one process's memory, as ``one_file.load`` returns a file's:
    whole tensors (for ``cl-run eval`` and ``export``, which build one plain network). ``parts``: only these
    tensor parts (e.g. ``("network",)``) are read from the shards, not the optimizer's moments (twice the
    network's size with AdamW); the rest of the state (epoch, step, callbacks) is read in any case."""
    import tempfile

    if not is_complete(path):
        raise UserError(f"{command}: {path} is not a complete sharded checkpoint (no {REST})")
    if parts is not None:
        state = read_parts(path, parts)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            with one_process_is_fine():
                compat.dcp_to_torch_save()(str(path), str(Path(scratch) / "whole.pt"))
            state = torch.load(Path(scratch) / "whole.pt", map_location="cpu", weights_only=True)
    state.update(torch.load(path / REST, map_location="cpu", weights_only=True))
    return state


def read_parts(path: Path, parts: tuple[str, ...]) -> dict[str, Any]:
    """The tensors of the checkpoint's ``parts`` (module state dicts: flat ``name -> tensor``), whole, read
    straight from the shards into tensors allocated from the checkpoint's metadata (no whole-checkpoint
    file in between; DCP reads only the byte ranges of the keys asked for)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state: dict[str, Any] = {part: {} for part in parts}
    for key, meta in saved.items():
        part, _, name = key.partition(".")
        if part in state and isinstance(meta, TensorStorageMetadata):
            state[part][name] = torch.empty(meta.size, dtype=meta.properties.dtype)
    with one_process_is_fine():
        dcp.load(state, checkpoint_id=str(path))
    return state
