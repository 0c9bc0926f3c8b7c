"""Sharded training (``train.strategy: fsdp``): FSDP2's ``fully_shard`` over the online network, the EMA
target network and the loss's parameters, so each of N processes holds 1/N of the parameters, gradients
and optimizer state instead of a whole copy (DDP).

Units: every block of a ``blocks``/``layers``/``stages`` list (a timm ViT's blocks, a convolutional network's stages) is
gathered for its own forward and freed after it; the rest of each part (backbone, projector, predictor,
token head, the target's copies, a loss with parameters) is one unit more. Every parameter is split
along its first dimension over all processes, the same way in the online and the target network, so the
EMA update is a local operation on each process's shards.

Forward methods: FSDP2 gathers a unit's weights in a hook before its ``forward``, and for no other method.
A method that computes with a unit's weights and is called directly, bypassing ``forward``, is registered
with FSDP2's ``register_fsdp_forward_method`` on every unit that has it, so it gathers them too: a token
backbone's ``forward_tokens`` (the ``clrun.tokens`` contract; the training step calls it on the online and
the target backbone), and any method a component names in its ``forward_methods`` attribute (a tuple of
method names). Such a method gathers its own unit's weights only: it must reach the units inside it (the
blocks) through their ``forward``.

What needs whole weights (the evaluators, the health checks, the exported encoder) gets them from
``whole_network``: a collective, called by every process at the same points of the run, that gathers a
plain copy (``clrun.training.loop`` does it around the epoch-end and run-end hooks).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from clrun import distributed
from clrun.recipe import Recipe
from clrun.training.parallel import compat

UNIT_LISTS = ("blocks", "layers", "stages")
# A module's own list of the methods, besides ``forward``, that callers call directly with its weights.
FORWARD_METHODS = "forward_methods"
# The methods of core's own contracts that are called directly: a token backbone's (``clrun.tokens``).
CONTRACT_FORWARD_METHODS = ("forward_tokens",)


def is_sharded(recipe: Recipe) -> bool:
    """Whether this run shards its parameters: the fsdp strategy with more than one process."""
    return recipe.train.strategy == "fsdp" and distributed.active()


def shard(parts: list[Optional[nn.Module]], device: torch.device) -> None:
    """``fully_shard`` every part (in place: their parameters become DTensors), block by block."""
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = compat.fsdp2().fully_shard
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    for part in parts:
        if part is None or not any(True for _ in part.parameters()):
            continue
        for name, child in list(part.named_modules()):
            if name.rsplit(".", 1)[-1] in UNIT_LISTS and isinstance(child, (nn.ModuleList, nn.Sequential)):
                for block in child:
                    if any(True for _ in block.parameters()):
                        fully_shard(block, mesh=mesh)
                        register_forward_methods(block)
        fully_shard(part, mesh=mesh)
        register_forward_methods(part)


def forward_methods(module: nn.Module) -> list[str]:
    """The names of ``module``'s methods besides ``forward`` that are called directly and compute with its
    weights: those of core's contracts it has (``CONTRACT_FORWARD_METHODS``) and those it lists itself
    (its ``forward_methods`` attribute)."""
    declared = getattr(module, FORWARD_METHODS, ())
    if isinstance(declared, str):
        declared = (declared,)
    names = [n for n in CONTRACT_FORWARD_METHODS if callable(getattr(module, n, None))]
    for name in declared:
        if not callable(getattr(module, name, None)):
            raise TypeError(f"{type(module).__name__}.{FORWARD_METHODS} names {name!r}, which is not a method of it")
        if name != "forward" and name not in names:
            names.append(name)
    return names


def register_forward_methods(unit: nn.Module) -> None:
    """Make each of ``forward_methods(unit)`` gather and free ``unit``'s weights as its ``forward`` does
    (``unit``: a module ``fully_shard`` was applied to)."""
    register_fsdp_forward_method = compat.fsdp2().register_fsdp_forward_method
    for name in forward_methods(unit):
        register_fsdp_forward_method(unit, name)


def shard_training(network: nn.Module, target: Optional[nn.Module], loss_fn: nn.Module, device: torch.device) -> None:
    """``shard`` what a step trains and reads: the online network's parts (backbone, projector, predictor, token
    head), the target network's copies and the loss (with parameters)."""
    shard([network.backbone, network.projector, network.predictor, network.token_head,
           *((target.backbone, target.projector) if target is not None else ()), loss_fn], device)


def reshard(module: nn.Module) -> None:
    """Free the gathered weights of ``module``'s sharded units. FSDP2 keeps a root unit's weights whole after
    its forward, for the backward it expects; the target network has no backward, so its units stay whole
    (plain tensors, not shards) until this."""
    FSDPModule = compat.fsdp2().FSDPModule
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


def template(network: nn.Module) -> nn.Module:
    """A plain copy of ``network`` on the CPU, taken before sharding: the shape ``whole_network`` fills."""
    return copy.deepcopy(network).to("cpu")


@torch.no_grad()
def whole_network(sharded: nn.Module, plain: nn.Module, device: torch.device) -> nn.Module:
    """A plain copy of ``sharded`` with its whole weights, on ``device``, on every process (a collective)."""
    dcp = compat.dcp_state_dict()
    state = dcp.get_model_state_dict(sharded, options=dcp.StateDictOptions(full_state_dict=True))
    whole = copy.deepcopy(plain).to(device)
    whole.load_state_dict(state)
    whole.train(sharded.training)
    return whole


@contextmanager
def whole_weights(run) -> Iterator[None]:
    """``run.whole``, a whole copy of a sharded run's network, for the duration (every process calls it at
    the same point); nothing for an unsharded run, whose ``run.network`` is whole already."""
    if run.parts.whole_template is None:
        yield
        return
    run.whole = whole_network(run.parts.network, run.parts.whole_template, run.device)
    try:
        yield
    finally:
        run.whole = None
