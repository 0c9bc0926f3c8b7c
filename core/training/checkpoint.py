"""Checkpoints: what they hold, written atomically, read without pickle (``weights_only=True``), and
restored into a freshly built run. The only module that knows a checkpoint's structure.

A checkpoint is written to a temporary file in the same folder (so the rename cannot cross file
systems), flushed to disk, then renamed over the old one: a crash at any moment leaves either the
previous complete checkpoint or the new complete one, never a half-written file.
"""

from __future__ import annotations

import contextvars
import pickle
import random
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clrun import distributed
from clrun.callback import Stateful
from clrun.errors import UserError
from clrun.run_folder import RunFolder
from clrun.storage import write_atomic
from clrun.training.run import Run
from clrun.training.setup import seed_augmentations

FORMAT = 1
REFIT = f"resume with the recipe the run was started with ({RunFolder('.').recipe.name} in its run folder)"


def save(run: Run, callbacks: list = (), position: dict[str, Any] | None = None,
         writer: BackgroundWriter | None = None) -> bool:
    """Write the run's checkpoint (rank 0), unless a callback holds checkpoints (the state may be
    collapsing); returns whether it was written. ``position``: where in the current epoch the run is
    (``{"batches": done, "sums": metric sums}``), for a checkpoint written mid-epoch. With ``writer``, the
    state is copied and written on the writer's thread while training goes on.

    Every rank calls it: the random states of all ranks are gathered, so that a resumed distributed
    run draws the augmentations it would have drawn."""
    rng_states = distributed.gather_objects(rng_state())
    if run.checkpoint_hold is not None:
        return False
    if not distributed.is_main():
        return True
    parts = run.parts
    state = {
        "format": FORMAT,
        "epoch": run.epoch,
        "step": run.step,
        "network": parts.network.state_dict(),
        "target": parts.target.state_dict() if parts.target is not None else None,
        "loss": parts.loss_fn.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
        "rng": rng_states[0],
        "rng_ranks": rng_states if len(rng_states) > 1 else [],
        "callbacks": callback_states(callbacks),
        "position": position,
    }
    if writer is None:
        save_atomic(state, run.folder.checkpoint)
    else:
        writer.write(snapshot(state), run.folder.checkpoint)
    run.checkpoint_epoch = run.epoch
    return True


def restore(run: Run, state: dict, source: str | Path = "the checkpoint", callbacks: list = (),
            changed: frozenset[str] = frozenset(), tensors_loaded: bool = False) -> None:
    """Load a checkpoint into a freshly built run; a checkpoint from a different recipe is a user error
    that names the part that does not fit, never a raw size-mismatch traceback.

    ``changed``: recipe sections a resume was allowed to change (``clrun.training.resume``). Their new
    settings win over the saved ones: the optimizer keeps its moments but takes the recipe's learning
    rate and weight decay, the schedules are rebuilt and advanced to the checkpoint's step.
    ``tensors_loaded``: the network, target, loss and optimizer states are in place already (a sharded
    checkpoint, ``clrun.training.sharded_checkpoint``); ``state`` holds the rest."""
    parts = run.parts
    if not tensors_loaded:
        load_modules(parts, state, source)
    step = int(state["step"])
    if changed & {"optimizer", "scheduler", "data", "train"}:
        _restore_with_new_settings(parts, state, step, tensors_loaded)
    else:
        if not tensors_loaded:
            parts.optimizer.load_state_dict(state["optimizer"])
        if parts.scheduler is not None and state["scheduler"] is not None:
            parts.scheduler.load_state_dict(state["scheduler"])
    if parts.target is not None and "target" in changed:
        parts.target.restart_schedule()  # the new momentum settings, at the updates made so far
    restore_callbacks(state, callbacks, f"--resume: {source}", required=True)
    run.epoch, run.step = int(state["epoch"]), step
    run.checkpoint_epoch = run.epoch
    run.position = state.get("position")
    if run.position is None:
        restore_streams(run, state)
    else:  # mid-epoch: after the loader's iterator is made (it draws a seed from the global stream)
        run.position["state"] = state


def load_modules(parts, state: dict, source: str | Path) -> None:
    """The network, target and loss states of ``state`` into ``parts``; a part the recipe and the
    checkpoint do not agree on is a user error."""
    for key, module in (("network", parts.network), ("target", parts.target), ("loss", parts.loss_fn)):
        saved = state.get(key)
        if module is None and saved is None:
            continue
        if saved is None:
            raise UserError(f"--resume: {source}: the recipe has a `target:` section but the checkpoint has no "
                            f"target network; {REFIT}")
        if module is None:
            raise UserError(f"--resume: {source}: the checkpoint has a target network but the recipe has no "
                            f"`target:` section; {REFIT}")
        load_module(module, saved, f"--resume: {source}: its {key} state", REFIT)


def restore_streams(run: Run, state: dict) -> None:
    """Every random stream as the checkpoint saved it, for this process."""
    per_rank = state.get("rng_ranks") or []
    if len(per_rank) == distributed.world_size():
        set_rng_state(per_rank[distributed.rank()])
    else:  # saved by a run with another number of processes: rank 0 continues its stream
        set_rng_state(state["rng"])
        seed_augmentations(run.recipe.seed + int(state["step"]))


def resume_in_epoch(run: Run) -> tuple[int, dict[str, float]]:
    """(batches done, metric sums) of the epoch a mid-epoch checkpoint stopped in; (0, {}) otherwise.
    Call it right after the epoch's loader iterator is made: it restores the random streams then."""
    if run.position is None:
        return 0, {}
    position, run.position = run.position, None
    restore_streams(run, position["state"])
    return int(position["batches"]), dict(position["sums"])


def _restore_with_new_settings(parts, state: dict, step: int, loaded: bool = False) -> None:
    """The optimizer's moments (when its kind is unchanged) under the recipe's new hyper-parameters, and
    a fresh schedule advanced ``step`` steps: the run continues as if it had had these settings
    (``loaded``: the moments are in place already)."""
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in parts.optimizer.param_groups]
    try:
        if not loaded:
            parts.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError):  # another optimizer: its state does not carry over, it starts afresh
        pass
    for group, settings in zip(parts.optimizer.param_groups, fresh):
        group.update(settings)
    if parts.scheduler is not None:
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                parts.scheduler.step()


def load_module(module: torch.nn.Module, saved: dict, what: str, fix: str) -> None:
    """``module.load_state_dict(saved)``, a mismatch reported as a user error: ``what`` does not fit; ``fix``."""
    try:
        module.load_state_dict(saved)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise UserError(f"{what} does not fit this recipe ({detail}); {fix}") from None


def callback_states(callbacks: list) -> dict[str, Any]:
    """The state of every stateful callback (``clrun.Stateful``), keyed by position and class name."""
    return {callback_key(i, cb): cb.state_dict() for i, cb in enumerate(callbacks) if isinstance(cb, Stateful)}


def restore_callbacks(state: dict, callbacks: list, source: str, required: bool) -> None:
    """Give each stateful callback its saved state; with ``required``, a missing one is an error (a
    resumed run must continue every callback), else it starts fresh (``cl-run eval`` with new callbacks)."""
    saved = state.get("callbacks") or {}
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Stateful):
            continue
        key = callback_key(i, cb)
        if key in saved:
            cb.load_state_dict(saved[key])
        elif required:
            raise UserError(f"{source}: it holds no state for callback {key}; {REFIT}")


def callback_key(index: int, callback: object) -> str:
    return f"{index}:{type(callback).__name__}"


def save_atomic(state: dict[str, Any], path: Path) -> None:
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
    """Writes checkpoints on a thread, one at a time, so a step-level checkpoint costs the training only
    the copy of its tensors (``snapshot``), not the serialization and the disk. A failed write is raised
    by the next ``write`` or ``wait``: the previous checkpoint is then still on disk (``save_atomic``)."""

    def __init__(self) -> None:
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
            save_atomic(state, path)
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


def expected_size(parts) -> int:
    """About how many bytes a checkpoint of ``parts`` takes: every tensor of the network, target and loss,
    and up to two optimizer moments per trainable parameter (Adam's; SGD's momentum takes one)."""
    modules = [m for m in (parts.network, parts.target, parts.loss_fn) if m is not None]
    states = sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())
    moments = sum(2 * p.numel() * p.element_size() for g in parts.optimizer.param_groups for p in g["params"])
    return states + moments


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


def rng_state() -> dict[str, Any]:
    """Every random stream the loop draws from, so a resumed run continues identically."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
