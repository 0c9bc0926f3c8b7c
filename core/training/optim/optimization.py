"""Build what updates a placed model: the optimizer over the parameter groups, its scheduler, the recipe's
scheduled settings and fp16's loss scaler.

Built after ``clrun.training.parallel.parallelize``: sharding replaces the parameters the optimizer holds, and a
SyncBatchNorm conversion rebuilds the heads the schedules set.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from clrun.recipe.schema import Recipe
from clrun.training.model.build_errors import BuildErrors
from clrun.training.optim.param_groups import (PinnedRates, build_groups, format1_groups, layer_scales, named_parameters,
                                              scale_learning_rates)
from clrun.training.optim.schedules import ScheduledScalars

if TYPE_CHECKING:
    from clrun.training.parallel.parallelize import Placed


@dataclass(frozen=True)
class Optimization:
    """What updates a placed model, as ``build_optimization`` built it."""

    optimizer: torch.optim.Optimizer
    scheduler: Any  # None without a scheduler: section
    schedules: ScheduledScalars  # the recipe's scheduled settings, set before each step
    scaler: torch.amp.GradScaler  # fp16's loss scaler (disabled for other precisions), checkpointed with the run
    # The groups' parameters as format-1 checkpoints saved them, where they differ (param_groups.format1_groups).
    format1_groups: Optional[list[list[nn.Parameter]]] = None


def build_optimization(placed: Placed, recipe: Recipe, steps_per_epoch: int) -> Optimization:
    """The optimizer, scheduler, schedules and scaler of ``placed``'s network and loss. Every setting that
    cannot be used is named before any error is raised."""
    model, errors = placed.model, BuildErrors()
    network, loss_fn, steps = model.network, model.loss_fn, model.total_steps
    layers = None
    if recipe.params.layer_decay is not None:
        layers = layer_scales(network.backbone, recipe.backbone.name, recipe.params.layer_decay)
    named = named_parameters(network, loss_fn)
    optimizer, scheduler, fixed = optimizer_and_scheduler(recipe, named, layers, steps, steps_per_epoch, errors)
    errors.raise_any()
    schedules = ScheduledScalars(steps_per_epoch, steps)
    # The network's own heads: those the run trains (a conversion may have rebuilt modules).
    heads = ((recipe.projector, network.projector), (recipe.predictor, network.predictor), (recipe.loss, loss_fn),
             (recipe.masking.head if recipe.masking is not None else None, network.token_head))
    for spec, module in heads:
        if spec is not None:
            errors.attempt(lambda: schedules.bind_attributes(spec, module), None)
    errors.attempt(lambda: schedules.bind_optimizer(recipe.optimizer, optimizer, fixed, recipe.scheduler), None)
    errors.raise_any()
    scaler = torch.amp.GradScaler(placed.device.type, enabled=recipe.train.precision == "fp16")
    decay_all = not recipe.train.exclude_bias_and_norm_from_weight_decay
    old_groups = format1_groups(named, recipe.params, decay_all, layers, steps_per_epoch, optimizer.param_groups)
    return Optimization(optimizer, scheduler, schedules, scaler, old_groups)


# The devices torch's fused optimizer kernels run on.
FUSED_DEVICES = ("cpu", "cuda")
# Settings that rule out (or choose instead of) the fused implementation.
NOT_FUSED = ("fused", "foreach", "differentiable", "capturable")


def fused_by_default(factory: Any, settings: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, bool]:
    """``fused=True`` for an optimizer that takes it (torch's SGD, Adam, AdamW, Adagrad) unless the recipe chose an
    implementation: one kernel per parameter group instead of one per tensor, and the update skipped on the
    device for a non-finite loss (clrun.training.non_finite) instead of restored from a copy."""
    if any(key in settings for key in NOT_FUSED) or "fused" not in _parameters(factory):
        return {}
    params = [p for group in groups for p in group["params"]]
    if not params or not all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params):
        return {}
    sharded = next((p for p in params if hasattr(p, "placements")), None)
    if sharded is not None and not _fused_takes_shards(factory, sharded):
        return {}
    return {"fused": True}


def _parameters(factory: Any) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def _fused_takes_shards(factory: Any, sharded: torch.Tensor) -> bool:
    """Whether ``factory``'s fused kernel runs on sharded parameters (DTensors, train.strategy: fsdp): DTensor has a
    rule for some fused kernels only (torch 2.14: Adam's and AdamW's, not SGD's or Adagrad's). Tried on a one-element
    parameter on ``sharded``'s mesh, replicated: a local step, no collective."""
    from torch.distributed.tensor import DTensor, Replicate

    local = torch.zeros(1, device=sharded.device)
    probe = nn.Parameter(DTensor.from_local(local, sharded.device_mesh, [Replicate()] * sharded.device_mesh.ndim,
                                            run_check=False))
    probe.grad = DTensor.from_local(torch.zeros_like(local), sharded.device_mesh,
                                    [Replicate()] * sharded.device_mesh.ndim, run_check=False)
    try:
        factory([probe], lr=0.0, fused=True).step()
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return False
    return True


def check_on_stand_in(recipe: Recipe, steps: int, steps_per_epoch: int, errors: BuildErrors) -> None:
    """Record in ``errors`` what is wrong with the optimizer's and scheduler's settings, built over a stand-in
    parameter: for a model that cannot be built, so that one check names these problems too."""
    optimizer_and_scheduler(recipe, list(nn.Linear(1, 1).named_parameters()), None, steps, steps_per_epoch, errors)


def optimizer_and_scheduler(recipe: Recipe, named: list[tuple[str, nn.Parameter]], layers: Optional[dict[str, float]],
                            steps: int, steps_per_epoch: int, errors: BuildErrors,
                            ) -> tuple[Optional[torch.optim.Optimizer], Any, list[set[str]]]:
    """The optimizer over the parameter groups (clrun.training.optim.param_groups), its scheduler, and the keys
    each group set itself (before the optimizer filled in its defaults)."""
    decay_all = not recipe.train.exclude_bias_and_norm_from_weight_decay
    groups = build_groups(named, recipe.params, decay_all, layers, steps_per_epoch)
    fixed = [set(group) - {"params"} for group in groups]
    fused = fused_by_default(recipe.optimizer.component.factory, recipe.optimizer.params, groups)
    optimizer = errors.build(recipe.optimizer, params=groups, **fused)
    if optimizer is None:
        return None, None, fixed
    scale_learning_rates(optimizer)  # before the scheduler reads the base rates
    scheduler = None
    if recipe.scheduler is not None:
        scheduler = errors.build(recipe.scheduler, optimizer=optimizer, total_steps=steps, steps_per_epoch=steps_per_epoch)
    if scheduler is not None and any("pinned_lr" in group for group in optimizer.param_groups):
        scheduler = PinnedRates(scheduler, optimizer)
    return optimizer, scheduler, fixed
