"""The per-run hook relay: the recipe's callbacks and the built-in ones, called through pluggy.

Where a built-in's place matters it says so itself: the metrics file and the console are ``trylast``
(they see every metric the others added), the health monitor and the run artifacts wrap the hooks
(``wrapper=True``: the monitor measures before and acts on its alarm after everything else; the
report is written after the metrics file). pluggy calls the last-registered plain implementation
first, so the recipe's callbacks are registered last-to-first: they run in recipe order.
"""

from __future__ import annotations

from typing import Callable

import pluggy
from torch.utils.data import Dataset

from clrun import distributed
from clrun.errors import TrainingHalted, UserError
from clrun.health.monitor import HealthMonitor
from clrun.health.token_maps import TokenMaps
from clrun.hookspecs import RunSpecs
from clrun.plugin_manager import ClrunPluginManager
from clrun.recipe import Recipe
from clrun.training.callbacks.artifacts import RunArtifacts
from clrun.training.callbacks.reporting import Console, MetricsLog
from clrun.training.callbacks.recipe_callbacks import CallbackError
from clrun.training.evaluation_wait import EvaluationWait
from clrun.training.run import Run


def builtin_callbacks(recipe: Recipe, dataset: Dataset, verbose: bool = False) -> list:
    """The run's own callbacks. Rank 0 alone writes and prints; the health monitor runs on every rank (its
    forward passes take part in SyncBatchNorm's collectives) so that every rank's alarm agrees."""
    builtins: list = []
    if recipe.health.enabled:
        builtins.append(HealthMonitor(recipe.health, dataset, recipe.seed))
    if distributed.is_main():
        builtins += [MetricsLog(), Console(recipe.train.progress, verbose), RunArtifacts()]
        if recipe.health.enabled:
            builtins.append(TokenMaps(dataset, recipe.seed))
    return builtins


def run_hooks(callbacks: list) -> pluggy.HookRelay:
    """A hook relay over ``callbacks``; a callback with a misspelled hook name (or arguments a hook does
    not have) is a user error."""
    pm = ClrunPluginManager(RunSpecs)
    try:
        for i, cb in reversed(list(enumerate(callbacks))):
            pm.register(cb, name=f"{i}: {getattr(cb, 'label', type(cb).__name__)}")
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UserError(
            f"a callback does not match cl-run's run hooks (a misspelled hook name, or arguments the hook "
            f"does not have?): {exc}"
        ) from None
    return pm.hook


def end_epoch(hooks: pluggy.HookRelay, run: Run, metrics: dict[str, float], save: Callable[[], None],
              evaluations: EvaluationWait | None = None) -> None:
    """The epoch-end hooks, then the ranks agree on whether to go on: rank 0 runs the callbacks and
    every rank the health alarm, so a halt or an error on any rank must stop all of them together.

    A recipe callback that fails here (``CallbackError``) does not cost the epoch: ``save`` writes its
    checkpoint before the error stops the run (on every rank, as checkpoints are written together)."""
    failure: Exception | None = None
    try:
        hooks.clrun_epoch_end(run=run, epoch=run.epoch, metrics=metrics)
    except Exception as exc:  # re-raised below, once every rank knows
        failure = exc
    if evaluations is not None:  # the others wait here, under the recipe's timeout, while rank 0 evaluates
        evaluations.wait(f"epoch {run.epoch}'s end")
    reasons = [None if failure is None else f"{type(failure).__name__}: {failure}"]
    if distributed.active():
        reasons = distributed.gather_objects(reasons[0])
    stopped = [(rank, reason) for rank, reason in enumerate(reasons) if reason is not None]
    if not stopped:
        return
    if any(reason.startswith(CallbackError.__name__) for _, reason in stopped):
        save()
    if failure is not None:
        raise failure
    rank, reason = stopped[0]
    raise TrainingHalted(f"process {rank} stopped the run at epoch {run.epoch}: {reason}")
