"""Place a built model for its run: on the device, in its memory layout, compiled, and spread over the
run's processes (DDP or FSDP), in one visible order.

``parallelize`` is the one place that knows the order, and why each step sits where it does; the model it
takes (``clrun.training.model.build``) knows nothing of devices, and the optimizer (``clrun.training.optim.optimization``)
is built from what it returns, since sharding replaces the parameters the optimizer holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import nn

from clrun import distributed
from clrun.errors import UserError
from clrun.recipe.schema import Recipe
from clrun.training.parallel import compat, sharding
from clrun.training.parallel.activation_checkpointing import checkpoint_activations
from clrun.training.model.build import Model
from clrun.training.model.network import OnlineNetwork, Trainable
from clrun.training.model.target import TargetNetwork
from clrun.training.parallel.compiling import compile_network


@dataclass(frozen=True)
class Placed:
    """A model as its run trains it on ``device``: the model's network, loss and views on the device (the
    network perhaps rebuilt with SyncBatchNorm, compiled or sharded), the momentum ``target`` copied from
    it, and ``trainable``: what a step differentiates (DDP-wrapped when several processes train unsharded)."""

    model: Model
    device: torch.device
    target: Optional[TargetNetwork]
    trainable: nn.Module
    # A sharded run's plain copy of the network (on the CPU): what its whole weights are gathered into.
    whole_template: Optional[OnlineNetwork]


def parallelize(model: Model, recipe: Recipe, device: torch.device, training: bool) -> Placed:
    """``model`` placed for its run on ``device``. ``training=False`` (checks, evaluation) leaves out what
    pays off over many steps only or needs the run's processes: compiling, sharding and DDP."""
    sharded = training and sharding.is_sharded(recipe)
    refuse_with_sharding(recipe, sharded)
    network, views = model.network, model.views
    if recipe.train.sync_batchnorm and distributed.active():
        if device.type == "cpu":
            raise UserError(
                "train.sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only, and this run trains on "
                "the CPU (gloo); set train.sync_batchnorm=false here"
            )
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)  # a new module: before anything holds the old
    network, views = network.to(device), views.to(device)
    if recipe.train.channels_last:
        network = network.to(memory_format=torch.channels_last)
        views.channels_last = True
    # Copied after the move, so it shares the online network's device and memory layout.
    target = TargetNetwork(network, recipe.target, model.total_steps) if recipe.target is not None else None
    if target is not None and model.init is not None and model.init.target:
        target.start_from(model.init.target)  # a teacher's weights (init:), in the online modules' names
        model.init.target = None  # loaded: the copy need not stay in memory
    loss_fn = model.loss_fn.to(device)
    if recipe.train.activation_checkpointing and training:
        # After the target's copy (the target takes no backward: nothing to recompute), before compiling and
        # sharding, which wrap the blocks it recomputes.
        checkpoint_activations(network.backbone, recipe.backbone.name)
    if recipe.train.compile and training:
        # By regions, in place (clrun.training.parallel.compiling): every path through the blocks, the
        # target's copy and the heads included.
        compile_network([network.backbone, network.projector, network.predictor, network.token_head,
                         *((target.backbone, target.projector) if target is not None else ())])
    whole = None
    if sharded:  # in place: the parameters become shards (DTensors), so before the optimizer is built
        whole = sharding.template(network)
        sharding.shard_training(network, target, loss_fn, device, sharding.precision(recipe))
    trainable: nn.Module = Trainable(network, loss_fn)
    if training and distributed.active() and not sharded:  # sharded, FSDP2 averages the gradients itself
        trainable = data_parallel(trainable, device)
    model = replace(model, network=network, loss_fn=loss_fn, views=views)
    return Placed(model, device, target, trainable, whole)


def refuse_with_sharding(recipe: Recipe, sharded: bool) -> None:
    """What FSDP2 cannot shard is refused before anything is placed."""
    if sharded and recipe.train.compile:
        raise UserError("train.compile: compiling a sharded backbone is not supported yet; set "
                        "train.compile=false with train.strategy=fsdp")
    if sharded and recipe.train.channels_last:
        raise UserError("train.channels_last: FSDP2 cannot shard channels-last (non-contiguous) weights; set "
                        "train.channels_last=false with train.strategy=fsdp")


def data_parallel(trainable: Trainable, device: torch.device) -> nn.Module:
    """``trainable`` wrapped in DistributedDataParallel (the process group is up).

    Buffers are not broadcast from rank 0 on every step: BatchNorm statistics stay per rank (as in
    most SSL code; SyncBatchNorm is the recipe option that makes them global), and a loss's state
    (a queue of keys) is kept identical by the loss itself. Rank 0's parameters and buffers are still
    copied to every rank once, at the start (by the constructor; on torch < 2.13, whose keyword for this
    also skips the buffers in that copy, by ``broadcast_buffers``).
    """
    # A loss with parameters may leave them out of some steps' graphs (prototypes frozen
    # for the first steps), and a token-level loss (a token head's) may never use the pooled branch (the
    # projector, a pooling norm); DDP must then look for unused parameters, at a small cost per step.
    maybe_unused = any(p.requires_grad for p in trainable.loss_fn.parameters())
    maybe_unused = maybe_unused or getattr(trainable.network, "token_head", None) is not None
    ddp = nn.parallel.DistributedDataParallel
    no_buffer_sync = compat.ddp_no_forward_buffer_sync(ddp)
    wrapped = ddp(
        trainable,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=maybe_unused,
        **no_buffer_sync,
    )
    if not compat.ddp_copies_buffers_at_start(no_buffer_sync):  # torch < 2.13: the first copy is ours to make
        broadcast_buffers(trainable)
    return wrapped


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers copied into every rank's ``module`` (a collective), as DDP's constructor does on
    torch >= 2.13: BatchNorm statistics and a loss's queue start equal on every rank, whatever each rank
    built."""
    for buffer in module.buffers():
        # Collectives take contiguous tensors; a channels-last buffer is sent through a contiguous copy.
        sent = buffer.contiguous()
        torch.distributed.broadcast(sent, src=0)
        if sent is not buffer:
            buffer.copy_(sent)
