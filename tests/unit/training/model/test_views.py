"""Augmented views: a view drawn several times is augmented as one stacked batch, with every copy's
parameters drawn independently."""

from __future__ import annotations

from pathlib import Path

import torch

import clrun
from clrun.training.model.views import Views

QUICKSTART = Path(__file__).resolve().parents[4] / "recipes" / "quickstart.yaml"


def quickstart_views() -> Views:
    recipe = clrun.load_recipe(QUICKSTART)
    return Views(recipe.views, recipe.data)


def images(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)


def test_a_view_drawn_twice_is_one_pipeline_call_on_the_stacked_batch():
    views = quickstart_views()
    x = images()
    torch.manual_seed(3)
    first, second = views(x)
    torch.manual_seed(3)
    stacked = views.normalize(views.pipelines[0](torch.cat([x, x]).float() / 255))
    assert torch.equal(first, stacked[:64]) and torch.equal(second, stacked[64:])


def test_the_two_copies_of_an_image_get_independent_augmentations():
    first, second = quickstart_views()(images())
    assert first.shape == second.shape == (64, 1, 28, 28)
    differs = (first - second).flatten(1).abs().amax(dim=1) > 1e-3
    assert differs.float().mean() > 0.95  # random crops of the same image almost never coincide
    # Normalized with the recipe's mean and std: the values are no longer in [0, 1].
    assert first.min() < 0 and first.max() > 1


def test_an_op_with_one_draw_per_batch_is_applied_copy_by_copy():
    recipe = clrun.load_recipe(QUICKSTART, ["views.0.transforms.0.same_on_batch=true"])
    views = Views(recipe.views, recipe.data)
    assert views.stackable == [False]
    first, second = views(images())
    # Within a batch every image gets the same crop box, but the two copies are separate draws.
    assert not torch.equal(first, second)
