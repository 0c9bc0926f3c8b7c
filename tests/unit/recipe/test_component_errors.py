"""Components that cannot work with the run's input or values are recipe errors at their entry (exit 2),
never a traceback: cases the recipe-mutation property test found."""

from __future__ import annotations

from pathlib import Path

import pytest

from clrun import plugin_manager
from clrun.cli import main

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"


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
        "<command line>:1:54: error: scheduler.warmup_epochs: must be a number >= 0 (0: no warm-up), got inf"),
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


def test_every_entry_that_cannot_be_built_is_named_at_once_at_its_key(tmp_path, capsys):
    """Factory errors are reported like recipe problems: all of them in one round, in file order, each at
    the setting the factory complained about (or at its entry when the message names no setting), and a
    value set by an override is blamed on the override."""
    text = TINY.read_text(encoding="utf-8").replace("scale: [0.3, 1.0]", "scale: [0.9, 0.1]")
    text = text.replace("  lr: 1e-3", "  lr: -1.0")
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(text, encoding="utf-8")
    # knots must be odd: a check of the factory's own (a Range in its signature would be a recipe problem).
    code = main(["check", str(recipe), "loss={name: clrun/lejepa, knots: 16}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    *lines, summary = err.splitlines()
    assert summary == "cl-run: 3 component(s) could not be built; nothing was run"
    assert [line.split(" could not be built: ")[0] for line in lines] == [
        f"{recipe}:18:16: error: views.0.transforms.0.scale: augmentation 'kornia/RandomResizedCrop'",
        f"{recipe}:34:3: error: optimizer: optimizer 'torch/AdamW'",
        "<command line>:1:34: error: loss.knots: loss 'clrun/lejepa'",
    ]
    assert lines[1].endswith("Invalid learning rate: -1.0")
    assert lines[2].endswith("clrun/lejepa: knots must be odd (the authors use 17), got 16")
