"""pluggy hook specifications.

Two families, kept in two plugin managers so that neither can be confused with the other:

* discovery hooks (process-wide, ``DiscoverySpecs``): a plugin module offers named components;
* run hooks (one manager per run, ``RunSpecs``): the callbacks a recipe names observe the run.

pluggy calls implementations with keyword arguments only, so a spec may gain arguments in a later
version but never lose or rename one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import pluggy

if TYPE_CHECKING:
    from torch import Tensor

    from clrun.component import Component
    from clrun.training.model.outputs import StepOutputs
    from clrun.training.run import Run

PROJECT = "clrun"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class DiscoverySpecs:
    """Hooks a plugin module (built-in or from an entry point) implements."""

    @hookspec
    def clrun_components(self) -> Iterable["Component"]:
        """Offer components: return an iterable of ``clrun.Component`` (and ``clrun.LazyComponents``, a
        namespace whose names are resolved on first use).

        Offering is not selecting: installing a plugin never changes what an existing recipe does.
        Names are ``"namespace/name"``; two plugins offering the same ``(kind, name)`` is an error
        that names both.
        """


class RunSpecs:
    """Hooks a callback (a component of kind ``callback``, or a built-in logger) implements.

    Every hook receives ``run``, the live ``clrun.Run`` (its public attributes are the callback
    contract: see ``clrun.callback``). A callback adds metrics by adding entries to the ``metrics``
    dict it is given. A ``clrun.Stateful`` callback has its state saved in every checkpoint and
    restored on ``--resume`` (before ``clrun_run_start``); a ``clrun.Evaluator`` is what ``cl-run eval``
    runs. The recipe's callbacks are called in recipe order; built-ins place themselves with
    ``trylast`` and ``wrapper`` (see ``clrun.training.callbacks.hooks``).

    In a distributed run (torchrun) the recipe's callbacks exist on rank 0 only: they must not call
    collectives, see rank 0's share of each batch, and a network copy they train goes through
    ``clrun.distributed.without_sync_batchnorm``.
    """

    @hookspec
    def clrun_run_start(self, run: "Run") -> None:
        """Called once after everything is built (and a checkpoint restored), before the first step."""

    @hookspec
    def clrun_step_end(self, run: "Run", step: int, metrics: dict[str, float]) -> None:
        """Called for each optimizer step, in order, with that step's scalar metrics (loss, lr, ...); entries
        added here are logged with the step and averaged into the epoch's metrics.

        The metrics are read from the device every ``train.log_every`` steps (a read makes the GPU wait), so
        this is called at the read for every step since the previous one: ``step`` is the step the metrics
        belong to, ``run.step`` may be further on. A value computed on the device during a step is reported
        with ``run.add_step_metric`` from ``clrun_step_outputs``, not read here."""

    @hookspec
    def clrun_step_outputs(self, run: "Run", outputs: "StepOutputs", labels: "Tensor") -> None:
        """Called after each optimizer step with what the step's views produced and the batch's labels.

        ``outputs`` are the tensors the loss saw (computed before this step's update); detach them before
        use, never backpropagate through them. ``labels`` are the data set's labels, ``-1`` for unlabeled
        images. This is where an online probe trains on the encoder's features as pre-training runs.

        ``outputs.online`` and ``outputs.target`` are the networks' ``clrun.Branch`` records. A callback
        class with this hook declares what it reads, as a loss does, in a class attribute:
        ``reads = frozenset({"online.features"})`` (``clrun.training.model.reads``): the build checks it against
        the recipe and against what the step makes for the loss (an error at the callback's recipe line).
        A callback never makes the step compute more: it observes the outputs the loss's step makes
        (an extra pass through a head with BatchNorm would change what the run trains).
        """

    @hookspec
    def clrun_epoch_end(self, run: "Run", epoch: int, metrics: dict[str, float]) -> None:
        """Called after each epoch (``epoch`` counts from 1); ``metrics`` holds the epoch means and the
        health monitor's measurements. Add entries to it to report them.

        Callbacks run in recipe order, after which the epoch's metrics are written and printed.
        """

    @hookspec
    def clrun_run_end(self, run: "Run", metrics: dict[str, float]) -> None:
        """Called once when training finished normally; add final results (e.g. accuracy) to ``metrics``."""

    @hookspec
    def clrun_run_error(self, run: "Run", error: BaseException) -> None:
        """Called when the run stops on an exception (including KeyboardInterrupt), before it propagates."""
