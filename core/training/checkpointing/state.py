"""The training state a checkpoint holds, declared once: ``TrainState``, a sequence of named stateful parts
(network, target, loss, optimizer, scheduler, GradScaler, callbacks, progress, the place in the epoch, the
random streams). Each part writes and reads its own entries of the saved state; both storages (one file,
sharded) save and restore exactly these parts, so new state is one part here.

The entries keep the names of cl-run's first checkpoint format, so checkpoints written by earlier versions
load; a part such a checkpoint lacks (the GradScaler's) starts fresh.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from clrun import distributed
from clrun.callback import Stateful
from clrun.errors import UserError
from clrun.run_folder import RunFolder
from clrun.training.checkpointing.random_state import rng_state, set_rng_state
from clrun.training.checkpointing.regroup import regroup
from clrun.training.parallel import compat
from clrun.training.run import Run
from clrun.training.seeding import seed_augmentations

# 2: mask tokens are weight-decayed, in the decayed optimizer groups (format 1: with the biases; its optimizer
# state is regrouped on load, clrun.training.checkpointing.regroup).
FORMAT = 2
REFIT = f"resume with the recipe the run was started with ({RunFolder('.').recipe.name} in its run folder)"
# Recipe sections whose change makes the recipe's optimizer and schedule settings win over the saved ones.
NEW_SETTINGS = frozenset({"optimizer", "scheduler", "data", "train"})


@dataclass(frozen=True)
class Position:
    """Where a mid-epoch checkpoint is in its epoch: the batches trained and the metric sums so far."""

    batches: int = 0
    sums: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Restoring:
    """How a restore reads the saved state. ``source``: the checkpoint (for messages); ``changed``: the recipe
    sections a resume was allowed to change (``policy``); ``sharded``: the tensor entries are DCP's state
    dicts (``state_dict(sharded=True)``)."""

    source: str
    changed: frozenset[str] = frozenset()
    sharded: bool = False

    @property
    def new_settings(self) -> bool:
        """Whether the recipe's optimizer and schedule settings win over the saved ones."""
        return bool(self.changed & NEW_SETTINGS)


class StatePart:
    """One named stateful part of the training state. ``keys``: its entries in the saved state; ``tensors``:
    a sharded checkpoint writes its entries through DCP, each process its shards (the rest go in one file)."""

    keys: tuple[str, ...] = ()
    tensors = False

    def state_dict(self, sharded: bool) -> dict[str, Any]:
        """Its entries; ``sharded``: tensors as DCP saves and loads them."""
        raise NotImplementedError

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        """Take its entries from ``saved`` (the whole saved state)."""
        raise NotImplementedError


class Module(StatePart):
    """A module's state (the online network, the loss); ``what`` names it in errors."""

    tensors = True

    def __init__(self, key: str, module: Optional[nn.Module], what: str) -> None:
        self.keys, self.module, self.what = (key,), module, what

    def state_dict(self, sharded: bool) -> dict[str, Any]:
        (key,) = self.keys
        if self.module is None:
            return {} if sharded else {key: None}
        if not sharded:
            return {key: self.module.state_dict()}
        if not self.module.state_dict():  # DCP stores tensors: a module without any has no entry
            return {}
        return {key: compat.dcp_state_dict().get_model_state_dict(self.module)}

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        (key,) = self.keys
        state = saved.get(key)
        if state is None:
            if self.module is None or (restoring.sharded and not self.module.state_dict()):
                return
            raise UserError(f"--resume: {restoring.source}: {self.missing()}; {REFIT}")
        if self.module is None:
            raise UserError(f"--resume: {restoring.source}: {self.unexpected()}; {REFIT}")
        if restoring.sharded:
            compat.dcp_state_dict().set_model_state_dict(self.module, state)
        else:
            load_module(self.module, state, f"--resume: {restoring.source}: its {key} state", REFIT)

    def missing(self) -> str:
        return f"the checkpoint has no {self.what}"

    def unexpected(self) -> str:
        return f"the checkpoint has a {self.what} the recipe does not build"


class Target(Module):
    """The target network (None without a ``target:`` section); a resume that changes its settings
    restarts its momentum schedule at the updates made so far."""

    def __init__(self, module) -> None:
        super().__init__("target", module, "target network")

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        state = saved.get("target")
        if (self.module is not None and self.module.snapshot is not None and isinstance(state, dict)
                and not restoring.sharded and not any(k.startswith("snapshot.") for k in state)):
            # A snapshot added on resume (--allow-changes): taken from the checkpoint's target backbone.
            snapshot = {"snapshot." + k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
            saved = {**saved, "target": {**state, **snapshot}}
        super().load_state_dict(saved, restoring)
        if self.module is not None and "target" in restoring.changed:
            self.module.restart_schedule()

    def missing(self) -> str:
        return "the recipe has a `target:` section but the checkpoint has no target network"

    def unexpected(self) -> str:
        return "the checkpoint has a target network but the recipe has no `target:` section"


class Optimizer(StatePart):
    """The optimizer's moments. A resume that changes the training keeps them (when the optimizer's kind is
    unchanged) under the recipe's new hyper-parameters."""

    keys, tensors = ("optimizer",), True

    def __init__(self, parts) -> None:
        self.parts = parts
        # As the recipe built them: taken before any restore, which replaces them with the saved ones.
        self.recipe_settings = [{k: v for k, v in g.items() if k != "params"} for g in parts.optimizer.param_groups]

    def state_dict(self, sharded: bool) -> dict[str, Any]:
        if not sharded:
            return {"optimizer": self.parts.optimizer.state_dict()}
        dcp = compat.dcp_state_dict()
        return {"optimizer": dcp.get_optimizer_state_dict(trained(self.parts), self.parts.optimizer)}

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        state = saved["optimizer"]
        if saved.get("format", 1) < 2 and self.parts.format1_groups is not None and not restoring.sharded:
            state = regroup(state, self.parts.format1_groups, self.parts.optimizer.param_groups, restoring.source,
                            REFIT)
        if not restoring.new_settings:
            self._load(state, restoring.sharded)
            return
        try:
            self._load(state, restoring.sharded)
        except (ValueError, KeyError):  # another optimizer: its state does not carry over, it starts afresh
            pass
        for group, settings in zip(self.parts.optimizer.param_groups, self.recipe_settings):
            group.update(settings)

    def _load(self, state: dict, sharded: bool) -> None:
        if not sharded:
            self.parts.optimizer.load_state_dict(state)
            return
        dcp = compat.dcp_state_dict()
        # Not strict: a parameter that had taken no step when the checkpoint was written (a group frozen for
        # the first epoch) has no saved state and starts afresh, as in a one-file checkpoint; the model's own
        # load stays strict, so a checkpoint of another network is still refused.
        dcp.set_optimizer_state_dict(trained(self.parts), self.parts.optimizer, state,
                                     options=dcp.StateDictOptions(strict=False))


class Scheduler(StatePart):
    """The learning-rate scheduler; a resume that changes the training rebuilds it, advanced to the step."""

    keys = ("scheduler",)

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def state_dict(self, sharded: bool) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        if self.scheduler is None:
            return
        if restoring.new_settings:  # the run continues as if it had had these settings from the start
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(int(saved["step"])):
                    self.scheduler.step()
        elif saved["scheduler"] is not None:
            self.scheduler.load_state_dict(saved["scheduler"])


class Scaler(StatePart):
    """fp16's GradScaler: its loss scale and growth tracker, so a resumed run does not restart its scale.
    Empty when it is disabled (bf16, fp32) and in checkpoints written before it was saved: it starts fresh."""

    keys = ("scaler",)

    def __init__(self, scaler: Optional[torch.amp.GradScaler]) -> None:
        self.scaler = scaler

    def state_dict(self, sharded: bool) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        if saved.get("scaler") and self.scaler is not None:
            self.scaler.load_state_dict(saved["scaler"])


class Callbacks(StatePart):
    """The state of every stateful callback (``clrun.Stateful``); a resumed run must continue each one."""

    keys = ("callbacks",)

    def __init__(self, callbacks: list) -> None:
        self.callbacks = callbacks

    def state_dict(self, sharded: bool) -> dict[str, Any]:
        return {"callbacks": callback_states(self.callbacks)}

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        restore_callbacks(saved, self.callbacks, f"--resume: {restoring.source}", required=True)


class Progress(StatePart):
    """How far the run got: epochs and optimizer steps completed."""

    keys = ("epoch", "step")

    def __init__(self, run: Run) -> None:
        self.run = run

    def state_dict(self, sharded: bool) -> dict[str, Any]:
        return {"epoch": self.run.epoch, "step": self.run.step}

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        self.run.epoch, self.run.step = int(saved["epoch"]), int(saved["step"])
        self.run.checkpoint_epoch = self.run.epoch


class InEpoch(StatePart):
    """The loader's place in the epoch: ``now`` is saved (None at an epoch's end); ``resumed`` is what a
    mid-epoch checkpoint restored, until the loop continues from it."""

    keys = ("position",)

    def __init__(self) -> None:
        self.now: Optional[Position] = None
        self.resumed: Optional[Position] = None

    def state_dict(self, sharded: bool) -> dict[str, Any]:
        now = self.now
        return {"position": None if now is None else {"batches": now.batches, "sums": dict(now.sums)}}

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        place = saved.get("position")
        self.resumed = None if place is None else Position(int(place["batches"]), dict(place["sums"]))


class RandomStreams(StatePart):
    """Every process's random streams. Restored at once for a checkpoint at an epoch's end; for one written
    mid-epoch only once the loop has made the epoch's loader iterator (``continue_streams``), which draws a
    seed from the global stream: the checkpoint was written after that draw."""

    keys = ("rng", "rng_ranks")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.pending: Optional[dict[str, Any]] = None

    def state_dict(self, sharded: bool) -> dict[str, Any]:
        # Every rank's streams, gathered (a collective: every rank saves), so that a resumed distributed run
        # draws the augmentations it would have drawn.
        states = distributed.gather_objects(rng_state())
        return {"rng": states[0], "rng_ranks": states if len(states) > 1 else []}

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        self.pending = saved
        if saved.get("position") is None:
            self.continue_streams()

    def continue_streams(self) -> None:
        """Set the restored streams for this process (nothing when none are pending)."""
        if self.pending is None:
            return
        saved, self.pending = self.pending, None
        per_rank = saved.get("rng_ranks") or []
        if len(per_rank) == distributed.world_size():
            set_rng_state(per_rank[distributed.rank()])
        else:  # saved by a run with another number of processes: rank 0 continues its stream
            set_rng_state(saved["rng"])
            seed_augmentations(self.run.recipe.seed + int(saved["step"]))


class TrainState:
    """A run's whole checkpointed state: the only place its parts are listed (save order = restore order)."""

    def __init__(self, run: Run, callbacks: list = ()) -> None:
        parts = run.parts
        self.in_epoch = InEpoch()
        self.streams = RandomStreams(run)
        self.parts: tuple[StatePart, ...] = (
            Module("network", parts.network, "network"), Target(parts.target), Module("loss", parts.loss_fn, "loss state"),
            Optimizer(parts), Scheduler(parts.scheduler), Scaler(parts.scaler), Callbacks(list(callbacks)),
            Progress(run), self.in_epoch, self.streams,
        )
        self.tensor_keys = frozenset(key for part in self.parts if part.tensors for key in part.keys)

    def state_dict(self, sharded: bool = False) -> dict[str, Any]:
        """The saved state (every rank calls it: the random streams are gathered from all)."""
        state: dict[str, Any] = {"format": FORMAT}
        for part in self.parts:
            state.update(part.state_dict(sharded))
        return state

    def sharded_tensors(self) -> dict[str, Any]:
        """The tensor parts' live state as DCP loads it (in place)."""
        return {k: v for part in self.parts if part.tensors for k, v in part.state_dict(sharded=True).items()}

    def load_state_dict(self, saved: dict[str, Any], restoring: Restoring) -> None:
        """Every part's entries from ``saved``; a part that does not fit the recipe is a user error."""
        for part in self.parts:
            part.load_state_dict(saved, restoring)


def trained(parts) -> nn.Module:
    """The modules whose parameters the optimizer updates, under the names its sharded state is saved by."""
    return nn.ModuleDict({"network": parts.network, "loss": parts.loss_fn})


def load_module(module: nn.Module, saved: dict, what: str, fix: str) -> None:
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


def expected_size(parts) -> int:
    """About how many bytes a checkpoint of ``parts`` takes: every tensor of the network, target and loss,
    and up to two optimizer moments per trainable parameter (Adam's; SGD's momentum takes one)."""
    modules = [m for m in (parts.network, parts.target, parts.loss_fn) if m is not None]
    states = sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())
    moments = sum(2 * p.numel() * p.element_size() for g in parts.optimizer.param_groups for p in g["params"])
    return states + moments
