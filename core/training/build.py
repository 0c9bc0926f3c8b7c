"""Build a recipe's components, in dependency order, into the parts the loop runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clrun.recipe.schema import Recipe
from clrun.training.network import OnlineNetwork, feature_dim
from clrun.training.views import Views


@dataclass
class Parts:
    views: Views
    network: OnlineNetwork
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    eval_size: tuple[int, int]


def param_groups(modules: list[nn.Module], weight_decay_on_all: bool) -> list[dict[str, Any]]:
    """Trainable parameters; biases and normalization weights (1-d tensors) get no weight decay
    unless ``weight_decay_on_all`` (the usual large-batch setup; LARS implementations also skip adapting them)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if weight_decay_on_all:
        return [{"params": params}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_parts(recipe: Recipe, example: Tensor, device: torch.device, steps_per_epoch: int) -> Parts:
    """``example``: a few uint8 images from the data set, used to measure view sizes and feature width."""
    views = Views(recipe.views, recipe.data)
    example_views = views(example)
    global_sizes = [tuple(v.shape[-2:]) for v, g in zip(example_views, views.is_global) if g]
    backbone = recipe.backbone.build()
    width = feature_dim(backbone, example_views[0])
    projector = recipe.projector.build(in_dim=width)
    network = OnlineNetwork(backbone, projector).to(device)
    if recipe.train.channels_last:
        network = network.to(memory_format=torch.channels_last)
        views.channels_last = True
    loss_fn = recipe.loss.build().to(device)
    groups = param_groups([network, loss_fn], not recipe.train.exclude_bias_and_norm_from_weight_decay)
    optimizer = recipe.optimizer.build(params=groups)
    scheduler = None
    if recipe.scheduler is not None:
        scheduler = recipe.scheduler.build(
            optimizer=optimizer, total_steps=total_steps(recipe, steps_per_epoch), steps_per_epoch=steps_per_epoch
        )
    return Parts(views.to(device), network, loss_fn, optimizer, scheduler, global_sizes[0] if global_sizes else example_views[0].shape[-2:])


def total_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    steps = recipe.train.epochs * steps_per_epoch
    return min(steps, recipe.train.max_steps) if recipe.train.max_steps else steps
