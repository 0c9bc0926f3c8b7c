"""Command-line overrides (``dotted.key=value``): applied to the recipe tree before validation.

Problems in an override are reported as ``<command line>:N:col``: N is the override's position
(1-based), col a column in that argument (1 for problems with the key, the value's column for
problems with the value).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import clrun
from clrun.recipe import RecipeError

TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("registry")


def errors(*overrides: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        clrun.load_recipe(TINY, overrides=list(overrides))
    assert str(info.value).splitlines() == [str(p) for p in info.value.problems]
    return str(info.value).splitlines()


def test_overrides_are_applied():
    recipe = clrun.load_recipe(
        TINY, overrides=["train.epochs=2", "backbone.name=timm/resnet10t", "views.0.count=3", "loss.temperature=0.1"]
    )
    assert recipe.train.epochs == 2
    assert recipe.backbone.name == "timm/resnet10t"
    assert recipe.views[0].count == 3
    assert recipe.loss.params == {"temperature": 0.1}
    # everything else is the file's
    assert recipe.data.batch_size == 16
    assert recipe.train.device == "cpu"
    assert recipe.views[0].transforms[0].params == {"size": (32, 32), "scale": (0.3, 1.0)}
    assert recipe.source == str(TINY)


def test_without_overrides_the_file_wins():
    recipe = clrun.load_recipe(TINY)
    assert (recipe.train.epochs, recipe.backbone.name, recipe.views[0].count) == (1, "timm/test_resnet", 2)


def test_later_override_wins():
    assert clrun.load_recipe(TINY, overrides=["train.epochs=2", "train.epochs=5"]).train.epochs == 5


def test_values_are_yaml():
    recipe = clrun.load_recipe(
        TINY,
        overrides=["views.0.transforms.0.size=[24, 24]", "optimizer.lr=5e-4", "train.progress=true", "run.name=my run",
                   "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"],
    )
    assert recipe.views[0].transforms[0].params["size"] == (24, 24)
    assert recipe.optimizer.params["lr"] == 0.0005
    assert recipe.train.progress is True
    assert recipe.run.name == "my run"
    assert (recipe.data.mean, recipe.data.std) == ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])


def test_override_creates_a_new_key():
    assert clrun.load_recipe(TINY).train.grad_clip is None
    assert clrun.load_recipe(TINY, overrides=["train.grad_clip=1.0"]).train.grad_clip == 1.0


def test_override_creates_a_new_section():
    recipe = clrun.load_recipe(TINY, overrides=["scheduler.name=clrun/constant", "scheduler.warmup_epochs=0.5"])
    assert recipe.scheduler.name == "clrun/constant"
    assert recipe.scheduler.params == {"warmup_epochs": 0.5}


def test_override_replaces_a_whole_entry():
    recipe = clrun.load_recipe(TINY, overrides=["optimizer={name: torch/SGD, lr: 0.1, momentum: 0.9}"])
    assert recipe.optimizer.name == "torch/SGD"
    assert recipe.optimizer.params == {"lr": 0.1, "momentum": 0.9}


# -- errors -------------------------------------------------------------------------------------

def test_no_equals_sign():
    assert errors("train.epochs") == [
        "<command line>:1:1: error: override 'train.epochs' must look like dotted.key=value"
    ]


def test_empty_key():
    assert errors("train.epochs=2", "=3") == ["<command line>:2:1: error: override '=3' must look like dotted.key=value"]


def test_list_index_out_of_range():
    assert errors("views.1.count=3") == [
        "<command line>:1:1: error: views.1.count: views is a list of 1; use an index from 0 to 0"
    ]


def test_list_index_not_a_number():
    assert errors("views.first.count=3") == [
        "<command line>:1:1: error: views.first.count: views is a list of 1; use an index from 0 to 0"
    ]


def test_key_through_a_scalar():
    assert errors("seed.value=1") == [
        "<command line>:1:1: error: seed.value: seed is a single value, not a section; cannot set 'value' inside it"
    ]
    assert errors("train.epochs.max=1") == [
        "<command line>:1:1: error: train.epochs.max: train.epochs is a single value, not a section; cannot set 'max' inside it"
    ]


def test_invalid_yaml_value():
    assert errors("train.epochs=[1") == [
        "<command line>:1:14: error: train.epochs: invalid YAML: expected ',' or ']', but got '<stream end>'"
    ]


def test_wrong_type_points_at_the_value():
    # N is the override's position; the column is the value's, in that argument.
    assert errors("train.epochs=2", "loss.temperature=hot") == [
        "<command line>:2:18: error: loss.temperature: expected a number, got string 'hot'"
    ]


def test_wrong_type_inside_a_mapping_value():
    assert errors("optimizer={name: torch/SGD, lr: fast}") == [
        "<command line>:1:33: error: optimizer.lr: expected a number, got string 'fast'"
    ]


def test_unknown_key_is_reported_on_the_command_line():
    # The key came from the command line, so the error must not name the recipe file.
    assert errors("train.epoch=2") == [
        "<command line>:1:1: error: train.epoch: unknown key 'epoch' for section 'train'; did you mean 'epochs'?"
    ]


def test_unknown_key_of_a_component_is_reported_on_the_command_line():
    assert errors("train.epochs=2", "loss.temperatur=0.1") == [
        "<command line>:2:1: error: loss.temperatur: unknown key 'temperatur' for loss 'clrun/ntxent'; "
        "did you mean 'temperature'?"
    ]


def test_unknown_section_is_reported_on_the_command_line():
    assert errors("trian.epochs=2") == [
        "<command line>:1:1: error: trian: unknown key 'trian' for a recipe; did you mean 'train'?"
    ]


def test_override_problems_are_all_reported():
    assert errors("train.epochs", "views.4.count=1", "seed.x=1") == [
        "<command line>:1:1: error: override 'train.epochs' must look like dotted.key=value",
        "<command line>:2:1: error: views.4.count: views is a list of 1; use an index from 0 to 0",
        "<command line>:3:1: error: seed.x: seed is a single value, not a section; cannot set 'x' inside it",
    ]


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-path", "relative-path"])
def test_override_and_file_problems_are_reported_together(tmp_path, monkeypatch, relative):
    # The recipe file's problems first, then the command line's, however the file is named.
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.read_text(encoding="utf-8").replace("  progress: false", "  progress: maybe"), encoding="utf-8")
    if relative:
        monkeypatch.chdir(tmp_path)
        path = Path("bad.yaml")
    with pytest.raises(RecipeError) as info:
        clrun.load_recipe(path, overrides=["train.epochs=ten"])
    assert str(info.value).splitlines() == [
        f"{path}:40:13: error: train.progress: expected a boolean, got string 'maybe'",
        "<command line>:1:14: error: train.epochs: expected an integer, got string 'ten'",
    ]
