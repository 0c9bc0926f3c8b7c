"""Build a recipe's components, in dependency order, into the parts the loop runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from clrun import distributed
from clrun.errors import ComponentError, UserError
from clrun.recipe.schema import Recipe
from clrun.recipe.spec import ComponentSpec
from clrun.recipe.types import parameters
from clrun.training.build_errors import BuildErrors
from clrun.training.param_groups import PinnedRates, build_groups, layer_scales, named_parameters, scale_learning_rates
from clrun.training.schedules import ScheduledScalars
from clrun.training.network import OnlineNetwork, output_dim
from clrun.training.masking import Masking, build_masking
from clrun.training.reads import step_reads
from clrun.training import sharding
from clrun.training.target import TargetNetwork
from clrun.training.views import Views


@dataclass
class Parts:
    views: Views
    network: OnlineNetwork
    target: Optional[TargetNetwork]
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    eval_size: tuple[int, int]
    total_steps: int
    feature_dim: int  # the backbone's output width
    projection_dim: int  # the projector's output width
    schedules: ScheduledScalars  # the recipe's scheduled settings, set before each step
    masking: Optional[Masking] = None  # the recipe's masking: section, built
    # What a step differentiates: set by the loop (network + loss_fn, in DDP when several processes
    # train); None builds it on use from network and loss_fn as they are.
    trainable: Optional[nn.Module] = None
    # A sharded run's plain copy of the network (on the CPU): what its whole weights are gathered into.
    whole_template: Optional[OnlineNetwork] = None
    # fp16's loss scaler (disabled for other precisions): built with the parts so a resume restores its scale.
    scaler: Optional[torch.amp.GradScaler] = None
    # What the loss and the callbacks read of each step (clrun.training.reads): the optional outputs computed.
    reads: frozenset[str] = frozenset()


def build_parts(recipe: Recipe, example: Tensor, device: torch.device, steps_per_epoch: int,
                training: bool = True) -> Parts:
    """``example``: a few uint8 images from the data set, used to measure view sizes and head widths.
    ``training=False`` (checks, evaluation) skips what only pays off over many steps: compiling.

    Every entry that can be built is, before any error is raised: the error lists them all."""
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
    steps = total_steps(recipe, steps_per_epoch)
    if errors.errors:  # the optimizer's and scheduler's settings are still checked, on a stand-in
        optimizer_and_scheduler(recipe, list(nn.Linear(1, 1).named_parameters()), None, steps, steps_per_epoch, errors)
    errors.raise_any()

    sharded = training and sharding.is_sharded(recipe)
    if sharded and recipe.train.compile:
        raise UserError("train.compile: compiling a sharded backbone is not supported yet; set "
                        "train.compile=false with train.strategy=fsdp")
    if sharded and recipe.train.channels_last:
        raise UserError("train.channels_last: FSDP2 cannot shard channels-last (non-contiguous) weights; set "
                        "train.channels_last=false with train.strategy=fsdp")
    network = OnlineNetwork(backbone, projector, predictor, token_head)
    if recipe.train.sync_batchnorm and distributed.active():
        if device.type == "cpu":
            raise UserError(
                "train.sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only, and this run trains on "
                "the CPU (gloo); set train.sync_batchnorm=false here"
            )
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    network = network.to(device)
    if recipe.train.channels_last:
        network = network.to(memory_format=torch.channels_last)
        views.channels_last = True
    # Copied after the move, so it shares the online network's device and memory layout.
    target = TargetNetwork(network, recipe.target, steps) if recipe.target is not None else None
    loss_fn = loss_fn.to(device)
    if recipe.train.compile and training:
        # In place (the state_dict keys stay those of the plain module), after the target's copy was taken.
        network.backbone.compile()
    whole = None
    if sharded:  # before the optimizer: sharding replaces the parameters
        whole = sharding.template(network)
        sharding.shard_training(network, target, loss_fn, device)
    layers = None
    if recipe.params.layer_decay is not None:
        layers = layer_scales(network.backbone, recipe.backbone.name, recipe.params.layer_decay)
    named = named_parameters(network, loss_fn)
    optimizer, scheduler, fixed = optimizer_and_scheduler(recipe, named, layers, steps, steps_per_epoch, errors)
    errors.raise_any()
    schedules = ScheduledScalars(steps_per_epoch, steps)
    # The network's own heads: those the run trains (a conversion above may have rebuilt modules).
    heads = ((recipe.projector, network.projector), (recipe.predictor, network.predictor), (recipe.loss, loss_fn),
             (recipe.masking.head if recipe.masking is not None else None, network.token_head))
    for spec, module in heads:
        if spec is not None:
            errors.attempt(lambda: schedules.bind_attributes(spec, module), None)
    errors.attempt(lambda: schedules.bind_optimizer(recipe.optimizer, optimizer, fixed, recipe.scheduler), None)
    errors.raise_any()
    eval_size = global_sizes[0] if global_sizes else tuple(example_views[0].shape[-2:])
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.train.precision == "fp16")
    return Parts(views.to(device), network, target, loss_fn, optimizer, scheduler, eval_size, steps,
                 feature_dim, projection_dim, schedules, masking, whole_template=whole, scaler=scaler, reads=reads)


def optimizer_and_scheduler(recipe: Recipe, named: list[tuple[str, nn.Parameter]], layers: Optional[dict[str, float]],
                            steps: int, steps_per_epoch: int, errors: BuildErrors,
                            ) -> tuple[Optional[torch.optim.Optimizer], Any, list[set[str]]]:
    """The optimizer over the parameter groups (clrun.training.param_groups), its scheduler, and the keys
    each group set itself (before the optimizer filled in its defaults)."""
    decay_all = not recipe.train.exclude_bias_and_norm_from_weight_decay
    groups = build_groups(named, recipe.params, decay_all, layers, steps_per_epoch)
    fixed = [set(group) - {"params"} for group in groups]
    optimizer = errors.build(recipe.optimizer, params=groups)
    if optimizer is None:
        return None, None, fixed
    scale_learning_rates(optimizer)  # before the scheduler reads the base rates
    scheduler = None
    if recipe.scheduler is not None:
        scheduler = errors.build(recipe.scheduler, optimizer=optimizer, total_steps=steps, steps_per_epoch=steps_per_epoch)
    if scheduler is not None and any("pinned_lr" in group for group in optimizer.param_groups):
        scheduler = PinnedRates(scheduler, optimizer)
    return optimizer, scheduler, fixed


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
    steps = recipe.train.epochs * steps_per_epoch
    return min(steps, recipe.train.max_steps) if recipe.train.max_steps else steps
