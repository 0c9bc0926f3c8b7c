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

Mixed precision (``train.fsdp_param_dtype``, ``train.fsdp_reduce_dtype``; FSDP2's ``MixedPrecisionPolicy``): the
shards, the optimizer and its state stay in fp32; each unit's weights are gathered in the parameter dtype
(bf16) and compute in it, its floating-point inputs cast to it, and gradients are reduced in the reduce dtype
(fp32). Each part's outputs are cast back to fp32 (``output_dtype``): the loss, which keeps its own parameters
in fp32, reads fp32 tensors, as it does under autocast. A BatchNorm layer is its own unit that keeps fp32
weights: its running statistics are fp32 buffers that FSDP does not cast, and a BatchNorm with bf16 weights
and fp32 statistics is refused by torch's CPU kernels (bf16 inputs with fp32 weights run, in bf16 out, as
autocast runs them). fp32 for both keys passes no policy: the same computation as before the keys existed.

What needs whole weights (the evaluators, the health checks, the exported encoder) gets them from
``whole_network``: a collective, called by every process at the same points of the run, that gathers a
plain copy (``clrun.training.loop`` does it around the epoch-end and run-end hooks).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

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
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A sharded run's mixed precision: the dtype gathered parameters compute in and the dtype gradients
    are reduced in (``train.fsdp_param_dtype``, ``train.fsdp_reduce_dtype``)."""

    param_dtype: torch.dtype
    reduce_dtype: torch.dtype


def precision(recipe: Recipe) -> Optional[Precision]:
    """The recipe's ``Precision`` for ``shard_training``; None for fp32 parameters and fp32 reductions (no
    policy at all: FSDP2's plain fp32 computation)."""
    param, reduce = DTYPES[recipe.train.fsdp_param_dtype], DTYPES[recipe.train.fsdp_reduce_dtype]
    if param == torch.float32 and reduce == torch.float32:
        return None
    return Precision(param, reduce)


def policies(mixed: Optional[Precision]) -> dict[str, dict[str, Any]]:
    """``fully_shard``'s keyword arguments for each kind of unit under ``mixed`` (empty without it): a
    ``block``, a part's ``root`` (its outputs cast back to fp32 for the loss) and a ``batch_norm`` layer
    (fp32 weights, its inputs left as they come)."""
    if mixed is None:
        return {"block": {}, "root": {}, "batch_norm": {}}
    Policy = compat.fsdp_mixed_precision_policy()
    param = None if mixed.param_dtype == torch.float32 else mixed.param_dtype
    block = Policy(param_dtype=param, reduce_dtype=mixed.reduce_dtype)
    root = Policy(param_dtype=param, reduce_dtype=mixed.reduce_dtype, output_dtype=torch.float32 if param else None)
    batch_norm = Policy(param_dtype=None, reduce_dtype=mixed.reduce_dtype, cast_forward_inputs=False)
    return {"block": {"mp_policy": block}, "root": {"mp_policy": root}, "batch_norm": {"mp_policy": batch_norm}}


def is_sharded(recipe: Recipe) -> bool:
    """Whether this run shards its parameters: the fsdp strategy with more than one process."""
    return recipe.train.strategy == "fsdp" and distributed.active()


def shard(parts: list[Optional[nn.Module]], device: torch.device, mixed: Optional[Precision] = None) -> None:
    """``fully_shard`` every part (in place: their parameters become DTensors), block by block; with
    ``mixed``, under its mixed-precision policies (``policies``)."""
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = compat.fsdp2().fully_shard
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    kinds = policies(mixed)
    low_precision = mixed is not None and mixed.param_dtype != torch.float32
    for part in parts:
        if part is None or not any(True for _ in part.parameters()):
            continue
        if low_precision:  # innermost first: FSDP2 shards children before the units that hold them
            for layer in part.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm) and any(True for _ in layer.parameters()):
                    fully_shard(layer, mesh=mesh, **kinds["batch_norm"])
        for name, child in list(part.named_modules()):
            if name.rsplit(".", 1)[-1] in UNIT_LISTS and isinstance(child, (nn.ModuleList, nn.Sequential)):
                for block in child:
                    if any(True for _ in block.parameters()):
                        fully_shard(block, mesh=mesh, **kinds["block"])
                        register_forward_methods(block)
        fully_shard(part, mesh=mesh, **kinds["root"])
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


def shard_training(network: nn.Module, target: Optional[nn.Module], loss_fn: nn.Module, device: torch.device,
                   mixed: Optional[Precision] = None) -> None:
    """``shard`` what a step trains and reads: the online network's parts (backbone, projector, predictor, token
    head), the target network's copies and the loss (with parameters). ``mixed`` (``precision(recipe)``)
    applies to the networks; the loss keeps its parameters and its computation in fp32."""
    shard([network.backbone, network.projector, network.predictor, network.token_head,
           *((target.backbone, target.projector, getattr(target, "snapshot", None)) if target is not None else ())],
          device, mixed)
    shard([loss_fn], device)


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
