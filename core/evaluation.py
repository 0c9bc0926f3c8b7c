"""``cl-run eval``: evaluate a trained run or checkpoint with its recipe's evaluators (or another file's).

An evaluator is any callback with an ``evaluate(run) -> dict[str, float]`` method (the kNN, linear-probe,
online-probe and fine-tuning callbacks are). The network is rebuilt from the run's ``recipe.yaml`` and
loaded from the checkpoint without pickle; results go to ``eval.json`` in the run folder and the report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from clrun.errors import UserError
from clrun.plugin_manager import default_registry
from clrun.recipe import load_recipe
from clrun.training import checkpoint
from clrun.training.build import build_parts
from clrun.training.loop import callback_key, example_batch, resolve_device, seed_everything
from clrun.training.run import Run

RESULTS_FILE = "eval.json"


def evaluate(run_or_checkpoint: str | Path, overrides: Iterable[str] = (), sections_from: str | Path | None = None) -> dict[str, float]:
    """Evaluate a checkpoint; ``overrides`` change the run's recipe (``callbacks.0.k=50``) and
    ``sections_from`` replaces whole sections (a file with its own ``callbacks:`` list)."""
    saved = checkpoint.find(run_or_checkpoint, "eval")
    folder = saved.parent
    recipe_file = folder / "recipe.yaml"
    if not recipe_file.is_file():
        raise UserError(f"eval: no recipe.yaml beside {saved}; cl-run rebuilds the network from the run's "
                        f"resolved recipe: put that run's recipe.yaml in {folder}")
    recipe = load_recipe(recipe_file, tuple(overrides), default_registry(), sections_from=sections_from)
    seed_everything(recipe.seed)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    device = resolve_device(recipe.train.device)
    dataset = recipe.data.dataset.build()  # a few images to measure the views with, as in training
    parts = build_parts(recipe, example_batch(dataset), device, steps_per_epoch=1, training=False)
    state = checkpoint.load(saved, "eval")
    try:
        parts.network.load_state_dict(state["network"])
    except RuntimeError as exc:
        raise UserError(f"eval: {saved}: its network does not fit the recipe ({' '.join(str(exc).split())})") from None
    run = Run(recipe, parts, device, folder, steps_per_epoch=1, epoch=int(state["epoch"]), step=int(state["step"]))
    callbacks = [spec.build() for spec in recipe.callbacks]
    saved_states = state.get("callbacks") or {}
    for i, cb in enumerate(callbacks):  # e.g. an online probe's trained heads
        if hasattr(cb, "load_state_dict") and callback_key(i, cb) in saved_states:
            cb.load_state_dict(saved_states[callback_key(i, cb)])
    evaluators = [cb for cb in callbacks if hasattr(cb, "evaluate")]
    if not evaluators:
        raise UserError(f"eval: the recipe's callbacks have no evaluator (a callback with an evaluate() method); "
                        f"add one under `callbacks:` in a file passed with --with (see `cl-run components callback`)")
    for cb in evaluators:
        if hasattr(cb, "clrun_run_start"):
            cb.clrun_run_start(run=run)
    results: dict[str, float] = {}
    for cb in evaluators:
        results.update(cb.evaluate(run))
    write_results(folder, {"checkpoint": str(saved), "epoch": run.epoch, "step": run.step,
                           "overrides": list(overrides), "with": str(sections_from) if sections_from else None,
                           "results": results})
    return results


def write_results(folder: Path, record: dict[str, Any]) -> None:
    tmp = folder / f".{RESULTS_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / RESULTS_FILE)
