"""The callback contract: what a callback may implement besides the run hooks, as public types.

A callback is any object with ``clrun_*`` run-hook methods (``clrun.hookspecs.RunSpecs``: no decorator
needed; a misspelled hook name is an error). Two optional capabilities are recognized by type:

* ``Stateful``: ``state_dict()`` / ``load_state_dict(state)``; the state lands in every checkpoint and is
  restored on ``--resume`` (before ``clrun_run_start``) and by ``cl-run eval``.
* ``Evaluator``: ``evaluate(run) -> {metric: value}``; run every ``every`` epochs, at the end of the run
  (its line printed), and by ``cl-run eval``.

What a callback may read from the run is ``clrun.Run``'s public attributes (``recipe``, ``folder``,
``directory``, ``device``, ``epoch``, ``step``, ``network``, ``encoder``, ``feature_dim``,
``projection_dim``, ``preprocess``, ``features``); ``run.parts`` is internal and may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from clrun.training.run import Run


@runtime_checkable
class Stateful(Protocol):
    """A callback whose state is checkpointed (an online probe's trained heads, a counter)."""

    def state_dict(self) -> dict[str, Any]:
        """The state to save in every checkpoint."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, on ``--resume`` (before ``clrun_run_start``) and in ``cl-run eval``."""
        ...


class Evaluator:
    """Base of evaluation callbacks (kNN, linear probe, fine-tuning, a plugin's own).

    Subclasses implement ``evaluate(run) -> {name: value}`` (accuracies in [0, 1]; a ``_projector``
    suffix for the projector branch's) and ``describe(results) -> str``, the line printed at the end of
    a run. ``every`` (epochs, 0: never) adds mid-run evaluations to the epoch's metrics.

    Under torchrun an evaluator runs on rank 0 only and calls no collectives; the other processes wait for it
    at a barrier whose timeout the recipe sets (``train.evaluation_timeout_minutes``). ``run.features`` gives
    bf16 features on a GPU and no projections for a projector wider than 2048 unless asked for.
    """

    every: int = 0

    def evaluate(self, run: "Run") -> dict[str, float]:
        """Evaluate the run's current network: ``{name: value}``, accuracies in [0, 1] as ``<name>_top1`` for the
        backbone's features and ``<name>_top1_projector`` for the projector's outputs."""
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(run)")

    def describe(self, results: dict[str, float]) -> str:
        """The line printed at the end of a run (and by ``cl-run eval``) for ``evaluate``'s results."""
        raise NotImplementedError(f"{type(self).__name__} must implement describe(results)")

    def clrun_epoch_end(self, run: "Run", epoch: int, metrics: dict[str, float]) -> None:
        """Every ``every`` epochs before the last, evaluate and add the results to the epoch's metrics."""
        if self.every and epoch % self.every == 0 and epoch < run.recipe.train.epochs:
            metrics.update(self.evaluate(run))

    def clrun_run_end(self, run: "Run", metrics: dict[str, float]) -> None:
        """At the end of the run, evaluate, add the results to the final metrics and print ``describe``'s line."""
        results = self.evaluate(run)
        metrics.update(results)
        print(self.describe(results), flush=True)
