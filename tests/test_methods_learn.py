"""Every method, trained briefly from its Fashion-MNIST recipe on real data, measurably improves the
encoder over its own untrained initialization.

Each recipe runs as shipped except for a shorter budget and what is not under test: a fixed draw of
training images for 4 epochs in batches of 128, kNN as the only evaluator, with a 5k neighbour bank,
and no health monitor or report (tests/test_collapse_alarm.py and tests/test_report.py test those).
Accuracy is kNN top-1 on the full official 10k test split, never trained on. The untrained encoder is
evaluated once per distinct encoder (conftest's ``untrained_knn``): the recipes with the same views start
from the same one. SimCLR (the quickstart) is measured the same way on its full run in
tests/test_end_to_end.py: with the 60k bank its untrained encoder already scores 77.1% (README), so
that test also compares it with its untrained encoder on this file's 5k bank (+10.2 measured).

Random convolutional features are already strong on Fashion-MNIST (~70%), so the asserted margins are
about half the measured gains: room for run-to-run float noise, not hopes. The budgets are the smallest
that keep a clear gain: 40 steps where the method gains early; MoCo 80 (its loss rises while its 4096-key
queue fills, 32 steps); SwAV 160 (its backbone gains nothing by 80 steps: -0.4, +1.2 at 120, +2.8 at
160). Measured with another seed (seed=1) as a check on the margins: BYOL +1.26, SimSiam +4.59, MoCo +3.64.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import clrun

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BANK = 5000  # neighbour-bank images (a fixed draw from the training split)

# recipe stem -> (training images, minimum kNN gain over the untrained encoder); measured gains noted.
CASES = {
    "barlow_twins_fmnist": (1280, 0.023),  # 40 steps: 67.82% -> 72.53% (+4.7)
    "byol_fmnist": (1280, 0.007),  # 40 steps: 67.82% -> 69.30% (+1.5); +1.9 at 80 steps
    "mocov2_fmnist": (2560, 0.024),  # 80 steps: 67.82% -> 72.63% (+4.8)
    "simsiam_fmnist": (1280, 0.011),  # 40 steps: 67.82% -> 70.10% (+2.3)
    "swav_fmnist": (5120, 0.014),  # 160 steps, multi-crop: 69.68% -> 72.47% (+2.8)
    "vicreg_fmnist": (1280, 0.026),  # 40 steps: 67.82% -> 73.10% (+5.3)
}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_report")]


def knn_only(stem: str) -> str:
    """An override keeping the recipe's own kNN evaluator (its first callback) alone, with a BANK bank."""
    knn = yaml.safe_load((RECIPES / f"{stem}.yaml").read_text(encoding="utf-8"))["callbacks"][0]
    assert knn["name"] == "clrun/knn"
    knn["train"]["subset"] = BANK
    return f"callbacks=[{json.dumps(knn)}]"


@pytest.mark.parametrize("stem", sorted(CASES))
def test_a_short_run_beats_the_untrained_encoder(stem, tmp_path, untrained_knn):
    images, margin = CASES[stem]
    budget = [f"data.dataset.subset={images}", "train.epochs=4", "health.enabled=false", knn_only(stem)]
    recipe = clrun.load_recipe(RECIPES / f"{stem}.yaml", [*budget, f"run.dir={tmp_path}", "train.progress=false"])
    run = clrun.train(recipe)
    trained = run.summary["knn_top1"]
    untrained = untrained_knn(recipe, recipe.callbacks[0].build())  # the same encoder before its first step
    print(f"{stem}: kNN top-1 on the 10k test split: trained {trained:.4f}, untrained {untrained:.4f}")
    assert trained >= untrained + margin
    # The run folder is complete and the loss went down.
    assert {"recipe.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= {p.name for p in run.directory.iterdir()}
    epochs = [json.loads(line) for line in (run.directory / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in epochs if r["kind"] == "epoch"]
    assert len(losses) == 4 and losses[-1] < losses[0]
