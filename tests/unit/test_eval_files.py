"""Every evaluation file in recipes/eval/ fits the recipes it is meant for (``cl-run eval --with``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clrun.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
EVAL_FILES = sorted((REPO / "recipes" / "eval").glob("*.yaml"))


def test_there_are_evaluation_files():
    assert EVAL_FILES


@pytest.mark.parametrize("path", EVAL_FILES, ids=lambda p: p.name)
def test_evaluation_file_replaces_the_quickstarts_callbacks_with_evaluators(path, registry):
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", (), registry, sections_from=path)
    assert recipe.callbacks and all(spec.name.startswith("clrun/") for spec in recipe.callbacks)
    for spec in recipe.callbacks:
        assert hasattr(spec.build(), "evaluate"), f"{spec.name} in {path.name} is not an evaluator"
