"""Components that cannot work with the run's input or values are recipe errors at their entry (exit 2),
never a traceback: cases the recipe-mutation property test found."""

from __future__ import annotations

from pathlib import Path

import pytest

from clrun import plugin_manager
from clrun.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = Path(__file__).parent / "recipes" / "tiny.yaml"


@pytest.fixture(autouse=True)
def shared_registry(registry, monkeypatch):
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)


CASES = {
    "3-channel backbone on gray images": (
        RECIPES / "quickstart.yaml", ["backbone={name: timm/resnet10t}"],
        "<command line>:1:10: error: backbone: backbone 'timm/resnet10t' cannot take the run's input of shape "
        "(1, 28, 28) (gray images need in_chans: 1): "),
    "an infinite warm-up": (
        TINY, ["scheduler={name: clrun/warmup_cosine, warmup_epochs: .inf}"],
        "<command line>:1:11: error: scheduler: scheduler 'clrun/warmup_cosine' could not be built: cannot convert "
        "float infinity to integer"),
    "a data set too large to index": (
        TINY, ["data.dataset.num_images=100000000000000000000000"],
        "error: data.dataset: dataset 'clrun/synthetic' could not be built: "),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_component_that_cannot_work_is_a_recipe_error(case, capsys, tmp_path):
    recipe, overrides, expected = CASES[case]
    code = main(["check", str(recipe), *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and "Traceback" not in err
