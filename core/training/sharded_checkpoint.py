"""Checkpoints of a run with ``train.strategy: fsdp``, through ``torch.distributed.checkpoint`` (DCP): every
process writes its own shards of the network, target, loss and optimizer state, and a checkpoint loads on
any number of processes, one included (DCP reshards while loading). The rest of the state (epoch, step,
schedule, callbacks, the place in the epoch, every process's random streams) is a small file that rank 0
writes next to the shards.

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
from torch import nn

from clrun import distributed
from clrun.errors import UserError
from clrun.run_folder import RunFolder
from clrun.storage import write_atomic, writing
from clrun.training import checkpoint

LATEST = "latest"
REST = "rest.pt"  # everything but the sharded tensors


def tensors(parts) -> dict[str, Any]:
    """The sharded state, keyed as DCP stores it: live tensors, which ``dcp.load`` fills in place."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"network": get_model_state_dict(parts.network),
             "optimizer": get_optimizer_state_dict(trained(parts), parts.optimizer)}
    if parts.loss_fn.state_dict():  # parameters (sharded) or buffers (a center, a queue)
        state["loss"] = get_model_state_dict(parts.loss_fn)
    if parts.target is not None:
        state["target"] = get_model_state_dict(parts.target)
    return state


def trained(parts) -> nn.Module:
    """The modules whose parameters the optimizer updates, under the names its state is saved by."""
    return nn.ModuleDict({"network": parts.network, "loss": parts.loss_fn})


def save(run, callbacks: list = (), position: Optional[dict[str, Any]] = None) -> bool:
    """Write a sharded checkpoint (every process calls it); returns whether it was written (a callback may
    hold checkpoints while the state looks unhealthy)."""
    rng_states = distributed.gather_objects(checkpoint.rng_state())
    if run.checkpoint_hold is not None:
        return False
    root = run.folder.sharded_checkpoint
    name = distributed.broadcast_object(f"step-{run.step:09d}-{uuid.uuid4().hex[:8]}")
    kept = "the previous checkpoint is kept" if latest(run.folder) else "no checkpoint was written yet"
    try:
        write_shards(run, callbacks, position, root / name, rng_states, kept)
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
    run.checkpoint_epoch = run.epoch
    return True


def write_shards(run, callbacks: list, position: Optional[dict[str, Any]], folder: Path, rng_states: list,
                 kept: str) -> None:
    """Every process's shards and rank 0's rest of the state, into the new checkpoint's ``folder``."""
    import torch.distributed.checkpoint as dcp

    with writing(folder, "checkpoint", kept), one_process_is_fine():
        # Per-process tensors that are not sharded (BatchNorm statistics) are saved from rank 0, as a
        # replicated run's checkpoint and the exported encoder have them.
        dcp.save(tensors(run.parts), checkpoint_id=str(folder),
                 planner=dcp.DefaultSavePlanner(dedup_save_to_lowest_rank=True))
        rest = {"format": checkpoint.FORMAT, "epoch": run.epoch, "step": run.step,
                "scheduler": run.parts.scheduler.state_dict() if run.parts.scheduler is not None else None,
                "rng": rng_states[0], "rng_ranks": rng_states if len(rng_states) > 1 else [],
                "callbacks": checkpoint.callback_states(callbacks) if distributed.is_main() else {},
                "position": position}
        if distributed.is_main():
            checkpoint.save_atomic(rest, folder / REST)


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


def restore(run, path: Path, callbacks: list = (), changed: frozenset[str] = frozenset()) -> None:
    """Load the sharded checkpoint at ``path`` into a freshly built run, on this run's number of processes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    parts = run.parts
    recipe_settings = [{k: v for k, v in g.items() if k != "params"} for g in parts.optimizer.param_groups]
    state = tensors(parts)
    saved_keys = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    if parts.target is not None and not any(k.startswith("target.") for k in saved_keys):
        raise UserError(f"--resume: {path}: the recipe has a `target:` section but the checkpoint has no target "
                        f"network; {checkpoint.REFIT}")
    try:
        with one_process_is_fine():
            dcp.load(state, checkpoint_id=str(path))
    except (RuntimeError, ValueError, KeyError) as exc:
        detail = " ".join(str(exc).split())[:500]
        raise UserError(f"--resume: {path} does not fit this recipe ({detail}); {checkpoint.REFIT}") from None
    set_model_state_dict(parts.network, state["network"])
    if "loss" in state:
        set_model_state_dict(parts.loss_fn, state["loss"])
    if parts.target is not None:
        set_model_state_dict(parts.target, state["target"])
    set_optimizer_state_dict(trained(parts), parts.optimizer, state["optimizer"])
    if changed & {"optimizer", "scheduler", "data", "train"}:  # the recipe's hyper-parameters win
        for group, settings in zip(parts.optimizer.param_groups, recipe_settings):
            group.update(settings)
    rest = torch.load(path / REST, map_location="cpu", weights_only=True)
    checkpoint.restore(run, rest, path, callbacks, changed, tensors_loaded=True)


def load_whole(path: Path, command: str) -> dict[str, Any]:
    """A sharded checkpoint gathered into one process's memory, as ``checkpoint.load`` returns a file's:
    whole tensors (for ``cl-run eval`` and ``export``, which build one plain network)."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    if not is_complete(path):
        raise UserError(f"{command}: {path} is not a complete sharded checkpoint (no {REST})")
    with tempfile.TemporaryDirectory() as scratch:
        with one_process_is_fine():
            dcp_to_torch_save(str(path), str(Path(scratch) / "whole.pt"))
        state = torch.load(Path(scratch) / "whole.pt", map_location="cpu", weights_only=True)
    state.update(torch.load(path / REST, map_location="cpu", weights_only=True))
    return state
