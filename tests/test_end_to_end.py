"""SimCLR trained from the quickstart recipe on real Fashion-MNIST measurably improves the encoder.

Accuracy is measured on the full official 10k test split, which training never sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import clrun
from clrun.plugins.callbacks.knn import KNNEvaluation
from clrun.training.build import build_parts
from clrun.training.loop import example_batch, seed_everything
from clrun.training.run import Run

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def random_encoder_knn(recipe, knn: KNNEvaluation) -> dict[str, float]:
    """The same recipe's encoder straight from initialization (no step taken), evaluated the same way."""
    seed_everything(recipe.seed)
    dataset = recipe.data.dataset.build()
    parts = build_parts(recipe, example_batch(dataset), torch.device("cpu"), steps_per_epoch=1)
    return knn.evaluate(Run(recipe, parts, torch.device("cpu"), None, steps_per_epoch=1))


@pytest.mark.slow
def test_simclr_on_a_fashion_mnist_subset_beats_the_untrained_encoder(tmp_path):
    recipe = clrun.load_recipe(QUICKSTART, [
        "data.dataset.subset=2560",
        "train.epochs=3",
        "callbacks.0.train.subset=10000",  # a smaller neighbour bank keeps the test short
        f"run.dir={tmp_path}",
        "train.progress=false",
    ])
    run = clrun.train(recipe)
    summary = json.loads((run.directory / "summary.json").read_text())
    trained = summary["knn_top1"]

    knn = recipe.callbacks[0].build()
    random = random_encoder_knn(recipe, knn)["knn_top1"]
    print(f"kNN top-1 on the 10k test split: trained {trained:.4f}, random encoder {random:.4f}")
    # Random convolutional features are already strong on Fashion-MNIST (the untrained encoder scores
    # ~73% here; raw pixels 85.5%), so 3 epochs on 2,560 images lift kNN by ~4 points (77.2% measured):
    # the margin asserted is what separates training from noise, not a hope.
    assert trained >= random + 0.03
    assert trained >= 0.75
    # The run folder is complete and consistent.
    assert {"recipe.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= {p.name for p in run.directory.iterdir()}
    epochs = [json.loads(l) for l in (run.directory / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in epochs if r["kind"] == "epoch"]
    assert len(losses) == 3 and losses[-1] < losses[0]


@pytest.mark.slow
def test_the_quickstart_recipe_reaches_80_percent_knn_top1(tmp_path):
    """The README's promise, on the recipe exactly as shipped (only the run folder moved)."""
    run = clrun.train(clrun.load_recipe(QUICKSTART, [f"run.dir={tmp_path}", "train.progress=false"]))
    assert run.summary["knn_top1"] >= 0.80
