"""Build a recipe's model: its components, in dependency order, measured and checked against each other.

``build_model`` makes what ``cl-run check`` and ``cl-run eval`` need to know about a recipe before it runs
anywhere: the views, the online network (backbone, projector, predictor, token head), the masking, the loss,
the widths that size the heads, the evaluation size and what the loss reads. It decides nothing about
devices, processes or precision (``clrun.training.parallel.parallelize`` does) and builds no optimizer
(``clrun.training.optim.optimization`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn

from clrun.errors import ComponentError
from clrun.recipe.schema import Recipe
from clrun.recipe.spec import ComponentSpec
from clrun.recipe.types import parameters
from clrun.training.model.build_errors import BuildErrors
from clrun.training.model.masking import Masking, build_masking
from clrun.training.model.network import OnlineNetwork, output_dim
from clrun.training.split.per_image import check_accumulation
from clrun.training.optim.optimization import check_on_stand_in
from clrun.training.model.reads import step_reads
from clrun.training.model.views import Views

if TYPE_CHECKING:
    from clrun.weights.plan import InitPlan


@dataclass(frozen=True)
class Model:
    """A recipe's components, built on the CPU (``clrun.training.parallel.parallelize`` places them)."""

    views: Views
    network: OnlineNetwork
    loss_fn: nn.Module
    masking: Optional[Masking]  # the recipe's masking: section, built
    reads: frozenset[str]  # what the loss reads of each step (clrun.training.model.reads)
    feature_dim: int  # the backbone's output width
    projection_dim: int  # the projector's output width
    eval_size: tuple[int, int]  # the global views' size: what evaluation resizes images to
    total_steps: int  # the optimizer steps the run takes (the target's and the schedules' length)
    init: Optional[InitPlan] = None  # what the recipe's init: section loaded (clrun.weights.plan)


def build_model(recipe: Recipe, example: Tensor, steps_per_epoch: int = 1) -> Model:
    """``recipe``'s model; ``example``: a few uint8 images from the data set, to measure view sizes and head
    widths with; ``steps_per_epoch`` sets ``total_steps``.

    Every entry that can be built is, before any error is raised: the error lists them all, the optimizer's
    and the scheduler's too (checked on a stand-in when the model cannot be built)."""
    errors = BuildErrors()
    views = Views(recipe.views, recipe.data, build=lambda spec: errors.build(spec, nn.Identity()))
    views_ok = not errors.errors
    example_views = views(example)
    global_sizes = [tuple(v.shape[-2:]) for v, g in zip(example_views, views.is_global) if g]
    backbone = errors.build(recipe.backbone)
    masking = None
    if recipe.masking is not None:
        generator = errors.build(recipe.masking.generator)
        if generator is not None and backbone is not None:
            masking = errors.attempt(lambda: build_masking(recipe, backbone, generator), None)
    feature_dim = projection_dim = predictor = None
    if backbone is not None and views_ok:
        feature_dim = errors.attempt(lambda: measured_width(recipe.backbone, backbone, example_views[0], "backbone"), None)
    projector = errors.build(recipe.projector, in_dim=feature_dim) if feature_dim is not None else None
    if projector is not None:
        projection_dim = errors.attempt(
            lambda: measured_width(recipe.projector, projector, torch.zeros(2, feature_dim), "projector"), None)
    if recipe.predictor is not None and projection_dim is not None:
        predictor = errors.build(recipe.predictor, in_dim=projection_dim)
    token_head = None
    if masking is not None and recipe.masking.head is not None and feature_dim is not None:
        global_view = next(v for v, g in zip(example_views, views.is_global) if g)
        sizes = errors.attempt(lambda: token_sizes(backbone, global_view), None)
        if sizes is not None:
            token_head = errors.build(recipe.masking.head, token_dim=sizes[0], patch_pixels=sizes[1])
    # A loss that needs the projection width waits for it; the others are checked regardless.
    loss_fn = None
    if projection_dim is not None or "in_dim" not in parameters(recipe.loss.component.factory)[0]:
        loss_fn = errors.build(recipe.loss, in_dim=projection_dim)
    # What the loss and the callbacks read, against what the recipe produces: an error at the reader's line.
    reads = frozenset()
    if loss_fn is not None:
        reads = errors.attempt(lambda: step_reads(recipe, loss_fn, recipe.callbacks), frozenset())
    if loss_fn is not None:  # micro-batches only for a loss they leave unchanged
        errors.attempt(lambda: check_accumulation(recipe, loss_fn), None)
    steps = total_steps(recipe, steps_per_epoch)
    if errors.errors:  # the optimizer's and scheduler's settings are still checked, on a stand-in
        check_on_stand_in(recipe, steps, steps_per_epoch, errors)
    errors.raise_any()
    eval_size = global_sizes[0] if global_sizes else tuple(example_views[0].shape[-2:])
    network = OnlineNetwork(backbone, projector, predictor, token_head)
    return Model(views, network, loss_fn, masking, reads, feature_dim, projection_dim, eval_size, steps)


def measured_width(spec: ComponentSpec, module: nn.Module, example: Tensor, what: str) -> int:
    """``module``'s output width on the run's example input; a component that cannot take that input is
    an error at its recipe entry (a 3-channel backbone on gray images, a head of the wrong width)."""
    try:
        return output_dim(module, example, what)
    except (RuntimeError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        hint = " (gray images need in_chans: 1)" if what == "backbone" and example.shape[1] == 1 else ""
        raise ComponentError(f"{spec.where}: error: {spec.path or what}: {what} {spec.name!r} cannot take the "
                             f"run's input of shape {tuple(example.shape[1:])}{hint}: {detail}") from None


def token_sizes(backbone: nn.Module, view: Tensor) -> tuple[int, int]:
    """(token width, values per patch) of ``backbone`` on a global view: what a token head is sized by."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        tokens = backbone.forward_tokens(view[:2])
    backbone.train(was_training)
    rows, columns = tokens.grid
    channels, height, width = view.shape[1:]
    return int(tokens.patches.shape[-1]), channels * (height // rows) * (width // columns)


def total_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    """The optimizer steps of the whole run: ``train.epochs`` epochs, or ``train.max_steps`` if fewer."""
    steps = recipe.train.epochs * steps_per_epoch
    return min(steps, recipe.train.max_steps) if recipe.train.max_steps else steps
