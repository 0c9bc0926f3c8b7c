"""The quickstart recipe, exactly as shipped, keeps the README's promise on real Fashion-MNIST.

Accuracy is measured on the full official 10k test split, which training never sees. Short runs of
every method against the untrained encoder: tests/test_methods_learn.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import clrun

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


@pytest.mark.slow
def test_the_quickstart_recipe_reaches_80_percent_knn_top1(tmp_path):
    """The README's promise, on the recipe exactly as shipped (only the run folder moved)."""
    run = clrun.train(clrun.load_recipe(QUICKSTART, [f"run.dir={tmp_path}", "train.progress=false"]))
    assert run.summary["knn_top1"] >= 0.80
