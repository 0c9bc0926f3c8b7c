"""Augmented views: a view drawn several times is augmented as one stacked batch, with every copy's
parameters drawn independently, cut from the one batch without full-size copies; the random draws stay on
the host when the views move, and nothing reads a value back from the images' device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import clrun
from clrun.training.model.views import Views

RECIPES = Path(__file__).resolve().parents[4] / "recipes"
QUICKSTART = RECIPES / "quickstart.yaml"


def quickstart_views() -> Views:
    recipe = clrun.load_recipe(QUICKSTART)
    return Views(recipe.views, recipe.data)


def images(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)


def test_a_view_drawn_twice_is_one_pipeline_call_on_the_stacked_batch(crop_path):
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


class Shapes(TorchFunctionMode):
    """The shape of every tensor torch makes inside."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, ...]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.seen.update(tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def test_the_copies_of_a_view_are_cut_from_the_one_batch(crop_path):
    """No full-size copy of the batch per copy: the stacked views' crops are cut from the one float batch."""
    recipe = clrun.load_recipe(QUICKSTART, ["views.0.count=3", "views.0.transforms.0.size=[16, 16]"])
    views = Views(recipe.views, recipe.data)
    with Shapes() as shapes:
        out = views(images(8))
    assert [v.shape for v in out] == [(8, 1, 16, 16)] * 3
    assert (24, 1, 28, 28) not in shapes.seen and (24, 1, 16, 16) in shapes.seen


def kornia_ops(views: Views) -> list[torch.nn.Module]:
    return [m for m in views.modules() if hasattr(m, "set_rng_device_and_dtype")]


def test_moving_the_views_leaves_the_random_draws_on_the_host():
    """kornia moves an op's draws with it (a float64 move gives float64 draws); the views keep them on the
    host, as drawn before: the same draws as unmoved views."""
    moved, kept = quickstart_views().to(torch.float64), quickstart_views()
    on = {(torch.device(op.device), op.dtype) for op in kornia_ops(moved)}
    assert on == {(torch.device("cpu"), torch.float32)}
    x = images().float() / 255
    torch.manual_seed(4)
    expected = kept.pipelines[0](x)
    torch.manual_seed(4)
    assert torch.equal(moved.pipelines[0](x), expected)


def recipe_images(stem: str) -> tuple[int, int, int]:
    """(C, H, W) of a shipped recipe's images: Fashion-MNIST's, CIFAR's or ImageNet's."""
    if "fmnist" in stem or stem == "quickstart":
        return 1, 28, 28
    return (3, 32, 32) if "cifar" in stem else (3, 224, 224)


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_recipes_views_run_on_a_device_without_reading_it(recipe):
    """Images on the meta device (an accelerator without values: reading one back raises, as does mixing
    a host tensor into its kernels), draws on the host: every op of every shipped recipe moves what it
    drew to the images' device itself and never reads a value back, and the crops take the batched
    kernel. (kornia's own move of its samplers to meta fails on reading their ranges: only the views'
    tensors are moved here; test_moving_the_views_leaves_the_random_draws_on_the_host covers the rest.)"""
    loaded = clrun.load_recipe(recipe)
    views = Views(loaded.views, loaded.data)
    views.normalize.to("meta")
    out = views(torch.empty(4, *recipe_images(recipe.stem), dtype=torch.uint8, device="meta"))
    assert len(out) == sum(views.counts) and all(v.device.type == "meta" for v in out)


def test_crops_inside_places_run_on_a_device_without_reading_it():
    recipe = clrun.load_recipe(QUICKSTART, ["views.0.transforms.0.name=clrun/random_resized_crop"])
    views = Views(recipe.views, recipe.data)
    views.normalize.to("meta")
    places = torch.tensor([[0, 4, 28, 20]]).repeat(4, 1)  # on the host, where the loader leaves them
    out = views(torch.empty(4, 1, 28, 28, dtype=torch.uint8, device="meta"), places)
    assert [v.shape for v in out] == [(4, 1, 28, 28)] * 2 and all(v.device.type == "meta" for v in out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("stem", ["quickstart", "dino_fmnist", "dino_vits16", "swav_multicrop_cifar10_r18"])
def test_on_cuda_the_views_never_wait_for_the_device(stem):
    """torch's sync debug mode raises on every call that makes the host wait for the GPU."""
    loaded = clrun.load_recipe(RECIPES / f"{stem}.yaml")
    views = Views(loaded.views, loaded.data).to("cuda")
    batch = torch.randint(0, 256, (8, *recipe_images(stem)), dtype=torch.uint8).cuda()
    views(batch)  # once before: lazy set-up (kernels, the pinned-memory pool) is not a step's work
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = views(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.device.type == "cuda" for v in out)
