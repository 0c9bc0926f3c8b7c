"""``train.accumulate_steps``: a batch in micro-batches, for a loss that is a mean of per-image terms."""

from __future__ import annotations

import pytest

import clrun
from clrun.recipe import RecipeError
from tests.conftest import built_run
from tests.unit.training.split.recipes import SAME_VIEWS, vit_recipe
from tests.unit.training.split.test_grad_cache import IMAGES, assert_same_gradients, gradients


def test_micro_batches_of_a_per_image_loss_give_the_whole_batch_loss_and_gradients(tmp_path):
    """BYOL (a momentum target and a predictor) on a network without BatchNorm, views that draw nothing."""
    whole_run = built_run(vit_recipe(tmp_path, "clrun/byol", transforms=SAME_VIEWS))
    # 256 images in 3 micro-batches of 85, 85 and 86: weighted by their sizes.
    accumulated_run = built_run(vit_recipe(tmp_path, "clrun/byol", train=", accumulate_steps: 3", transforms=SAME_VIEWS))
    whole_loss, whole_metrics, whole = gradients(whole_run)
    accumulated_loss, accumulated_metrics, accumulated = gradients(accumulated_run)
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-5)
    assert accumulated_metrics == pytest.approx(whole_metrics, rel=1e-4)
    assert_same_gradients(accumulated, whole)


def test_accumulating_a_loss_over_the_whole_batch_is_refused_at_the_key_with_the_alternative(tmp_path):
    with pytest.raises(clrun.ComponentError) as caught:
        built_run(vit_recipe(tmp_path, "clrun/ntxent", train=", accumulate_steps: 4"))
    assert str(caught.value) == (
        f"train.accumulate_steps=4: the loss clrun/ntxent ({tmp_path / 'ntxent.yaml'}:23:3) is not a mean of "
        "per-image terms (its value couples the images of a batch: negatives, batch statistics, a center or a "
        "queue), so 4 micro-batches would optimize another objective. Use train.grad_cache_chunks=4 instead "
        "(gradient caching: the whole batch's loss, exactly, at the memory of one chunk), or "
        "train.accumulate_steps=1 (a plugin loss that is such a mean declares `per_image_mean = True`)")


def test_accumulation_and_gradient_caching_at_once_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError) as caught:
        vit_recipe(tmp_path, "clrun/ntxent", train=", accumulate_steps: 2, grad_cache_chunks: 2")
    assert "train.grad_cache_chunks: gradient caching and train.accumulate_steps split the batch two ways" in str(caught.value)


def test_only_losses_that_are_a_mean_of_per_image_terms_declare_it(registry):
    declared = {name for name in registry.names("loss") if name.startswith("clrun/")
                and getattr(registry.get("loss", name).factory, "per_image_mean", False)}
    assert declared == {"clrun/byol", "clrun/simsiam", "clrun/mae", "clrun/ijepa"}
