"""Short training runs scored by kNN against the same encoder untrained: the shared body of the learning
tests (tests/integration/test_methods_learn.py for the ResNet recipes, tests/integration/test_methods_learn_vit.py for the ViT
ones; two files so that pytest-xdist, which hands out whole files, runs them on two workers).

Loaded by path (pytest runs with --import-mode=importlib):
    _spec = importlib.util.spec_from_file_location("short_runs", Path(__file__).with_name("short_runs.py"))
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

import clrun

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
BANK = 5000  # neighbour-bank images (a fixed draw from the training split)


def knn_only(stem: str) -> str:
    """An override keeping the recipe's own kNN evaluator (its first callback) alone, with a BANK bank."""
    knn = yaml.safe_load((RECIPES / f"{stem}.yaml").read_text(encoding="utf-8"))["callbacks"][0]
    assert knn["name"] == "clrun/knn"
    knn["train"]["subset"] = BANK
    return f"callbacks=[{json.dumps(knn)}]"


def short_run(stem: str, images: int, tmp_path: Path, *overrides: str) -> clrun.Run:
    """``stem`` trained 4 epochs on ``images`` images (``overrides``: e.g. a smaller batch), evaluated by kNN alone."""
    budget = [f"data.dataset.subset={images}", "train.epochs=4", "health.enabled=false", knn_only(stem), *overrides]
    recipe = clrun.load_recipe(RECIPES / f"{stem}.yaml", [*budget, f"run.dir={tmp_path}", "train.progress=false"])
    return clrun.train(recipe)


def epoch_losses(run: clrun.Run) -> list[float]:
    records = [json.loads(line) for line in (run.directory / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "epoch"]


def assert_beats_untrained(stem: str, images: int, margin: float, tmp_path: Path, untrained_knn,
                           *overrides: str) -> None:
    """``stem`` trained 4 epochs on ``images`` images (with ``overrides``) beats its own untrained encoder's
    kNN top-1 by ``margin``; its run folder is complete and its loss went down."""
    run = short_run(stem, images, tmp_path, *overrides)
    trained = run.summary["knn_top1"]
    untrained = untrained_knn(run.recipe, run.recipe.callbacks[0].build())  # the same encoder before its first step
    print(f"{stem}: kNN top-1 on the 10k test split: trained {trained:.4f}, untrained {untrained:.4f}")
    assert trained >= untrained + margin
    assert {"recipe.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= {p.name for p in run.directory.iterdir()}
    losses = epoch_losses(run)
    assert len(losses) == 4 and losses[-1] < losses[0]
