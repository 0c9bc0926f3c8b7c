"""``cl-run eval``: evaluate a trained run or checkpoint with its recipe's evaluators (or another file's).

An evaluator is a ``clrun.Evaluator`` callback (the kNN, linear-probe, online-probe and fine-tuning
callbacks are). The network is rebuilt from the run's resolved recipe and loaded from the checkpoint
without pickle; results go to the run folder's evaluation file and its report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from clrun.callback import Evaluator
from clrun.errors import UserError
from clrun.plugin_manager import default_registry
from clrun.recipe import load_recipe
from clrun.run_folder import RunFolder
from clrun.storage import elsewhere, make_folder, write_atomic
from clrun.training import checkpointing
from clrun.training.run import Run
from clrun.training.setup import prepare

# The run folder may be read-only (archived, shared, mounted): the results can go anywhere else.
EVAL_ELSEWHERE = "write the evaluation to {place} instead (-o DIR, or out= in Python)"


def evaluate(run_or_checkpoint: str | Path, overrides: Iterable[str] = (), sections_from: str | Path | None = None,
             out: str | Path | None = None) -> dict[str, float]:
    """Evaluate a checkpoint; ``overrides`` change the run's recipe (``callbacks.0.k=50``) and
    ``sections_from`` replaces whole sections (a file with its own ``callbacks:`` list). The results go to
    the run folder's evaluation file, or to the one in the folder ``out`` (for a read-only run folder)."""
    saved = checkpointing.find(run_or_checkpoint, "eval")
    folder = RunFolder.of_checkpoint(saved)
    if not folder.is_run():
        raise UserError(f"eval: no {folder.recipe.name} beside {saved}; cl-run rebuilds the network from the run's "
                        f"resolved recipe: put that run's {folder.recipe.name} in {folder.path}")
    recipe = load_recipe(folder.recipe, tuple(overrides), default_registry(), sections_from=sections_from)
    setup = prepare(recipe, "eval")  # the data set's images measure the views, as in training
    # The network and the small rest (epoch, step, callbacks): a sharded run's optimizer moments stay unread.
    state = checkpointing.load(saved, "eval", parts=("network",))
    checkpointing.load_module(setup.parts.network, state["network"], f"eval: {saved}: its network",
                           "evaluate it with the recipe it was trained with")
    run = Run(recipe, setup.parts, setup.device, folder, steps_per_epoch=1, epoch=int(state["epoch"]), step=int(state["step"]),
              deferred_files={})  # the evaluators' pictures (clrun.space) go where the evaluation goes
    callbacks = [spec.build() for spec in recipe.callbacks]
    checkpointing.restore_callbacks(state, callbacks, f"eval: {saved}", required=False)  # e.g. an online probe's heads
    evaluators = [cb for cb in callbacks if isinstance(cb, Evaluator)]
    if not evaluators:
        raise UserError("eval: the recipe's callbacks have no evaluator (a clrun.Evaluator callback); "
                        "add one under `callbacks:` in a file passed with --with (see `cl-run components callback`)")
    for cb in evaluators:
        if hasattr(cb, "clrun_run_start"):  # the run hooks are optional: a callback implements those it needs
            cb.clrun_run_start(run=run)
    results: dict[str, float] = {}
    for cb in evaluators:
        own = cb.evaluate(run)
        results.update(own)
        print(cb.describe(own), flush=True)  # each evaluator's line, as at the end of a run
    with elsewhere(EVAL_ELSEWHERE):
        target = written_to(folder, out)
        target.write_evaluation({"checkpoint": str(saved), "epoch": run.epoch, "step": run.step,
                                 "overrides": list(overrides), "with": str(sections_from) if sections_from else None,
                                 "results": results})
        for name, content in run.deferred_files.items():
            write_atomic(getattr(target, name), content, "eval")
    return results


def written_to(folder: RunFolder, out: str | Path | None) -> RunFolder:
    """The folder the evaluation (and its report) is written to: the run's, or ``out`` (created if missing)."""
    return folder if out is None else RunFolder(make_folder(Path(out), "eval"))
