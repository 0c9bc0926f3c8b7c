"""Which losses may be accumulated over micro-batches (``train.accumulate_steps``): those that are a mean of
per-image terms (a regression to a target per image, a reconstruction), which a loss declares with the class
attribute ``per_image_mean = True``. The others (negatives from the batch, batch statistics, a center or a
queue updated per call) would optimize another objective on micro-batches: they are refused, and gradient
caching (``train.grad_cache_chunks``, ``clrun.training.split.grad_cache``) computes them exactly."""

from __future__ import annotations

from torch import nn

from clrun.errors import ComponentError
from clrun.recipe.schema import Recipe

# The class attribute by which a loss says it is a mean of per-image terms (see the module's docstring).
PER_IMAGE_MEAN = "per_image_mean"


def is_per_image_mean(loss_fn: nn.Module) -> bool:
    return getattr(loss_fn, PER_IMAGE_MEAN, False) is True


def check_accumulation(recipe: Recipe, loss_fn: nn.Module) -> None:
    """``train.accumulate_steps`` > 1 is refused for a loss that is not a mean of per-image terms."""
    count = recipe.train.accumulate_steps
    if count > 1 and not is_per_image_mean(loss_fn):
        spec = recipe.loss
        raise ComponentError(
            f"train.accumulate_steps={count}: the loss {spec.name} ({spec.where}) is not a mean of per-image "
            f"terms (its value couples the images of a batch: negatives, batch statistics, a center or a queue), "
            f"so {count} micro-batches would optimize another objective. Use train.grad_cache_chunks={count} "
            f"instead (gradient caching: the whole batch's loss, exactly, at the memory of one chunk), or "
            f"train.accumulate_steps=1 (a plugin loss that is such a mean declares `{PER_IMAGE_MEAN} = True`)")
