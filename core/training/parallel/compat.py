"""The torch APIs cl-run uses that newer torch releases moved or renamed, found by feature detection: each
function returns what the installed torch has (the newer API, else its older equivalent) or raises a
``UserError`` naming the feature, this torch's version and the version that brought it.

cl-run runs on torch >= 2.4 (``pyproject.toml``): everything a single process needs is there, and FSDP2 in
its first place. What came later or moved, and where it came from (read in the torch sources, pull requests
and release documentation):

- DDP's ``forward_sync_buffers`` keyword: torch 2.13, which deprecated ``broadcast_buffers`` for it. The
  older ``broadcast_buffers=False`` stops the same per-step broadcast but also leaves the buffers out of
  the constructor's first copy from rank 0 (since torch 2.1, pytorch/pytorch#100729), so the caller copies
  them itself (``clrun.training.parallel.parallelize``).
- FSDP2 (``fully_shard``, ``FSDPModule``, ``register_fsdp_forward_method``): public as
  ``torch.distributed.fsdp`` from torch 2.6; before, ``torch.distributed._composable.fsdp``, which has
  ``register_fsdp_forward_method`` (pytorch/pytorch#125394) from torch 2.4. Older: refused (a torch
  below cl-run's floor, installed by hand).
- FSDP2's ``MixedPrecisionPolicy`` (``train.fsdp_param_dtype``, ``train.fsdp_reduce_dtype``): beside
  ``fully_shard`` in both places, ``torch.distributed.fsdp`` (torch >= 2.6) and
  ``torch.distributed._composable.fsdp`` (torch 2.4, 2.5).
- DCP's ``DefaultSavePlanner(dedup_save_to_lowest_rank=...)``: without the keyword, DCP's deduplication
  always kept a replicated tensor on the lowest rank, which is what the keyword asks for.
- DCP's ``torch.distributed.checkpoint.state_dict`` (get/set the model's and optimizer's state dicts,
  ``StateDictOptions``) and ``format_utils.dcp_to_torch_save``: in torch 2.3 and later; checked all the
  same, so that a torch without them gets this module's message instead of an ImportError mid-run.
- ``torch._foreach_lerp_`` with a 0-dim tensor weight (the EMA target's update, weighted by a device flag):
  probed once per device type; without it, the same update through ``_foreach_sub``/``_foreach_mul_``/``_add_``.
- Fused optimizers' ``found_inf`` (skipping an update on the device, clrun.training.non_finite): torch's
  GradScaler protocol, ``_step_supports_amp_scaling``, in every supported torch.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from types import ModuleType
from typing import Any, Callable, NamedTuple

import torch

from clrun.errors import UserError

FSDP_PUBLIC = "torch.distributed.fsdp"
FSDP_PROTOTYPE = "torch.distributed._composable.fsdp"
FSDP_NAMES = ("fully_shard", "FSDPModule", "register_fsdp_forward_method")
FSDP_POLICY = "MixedPrecisionPolicy"
DCP_STATE_DICT = "torch.distributed.checkpoint.state_dict"
DCP_STATE_DICT_NAMES = ("get_model_state_dict", "set_model_state_dict", "get_optimizer_state_dict",
                        "set_optimizer_state_dict", "StateDictOptions")
DCP_FORMAT_UTILS = "torch.distributed.checkpoint.format_utils"


class Fsdp2(NamedTuple):
    """FSDP2's three entry points, from wherever this torch keeps them."""

    fully_shard: Callable[..., Any]
    FSDPModule: type
    register_fsdp_forward_method: Callable[..., Any]


def torch_version() -> str:
    """The installed torch's version, without a local build tag (``2.14.1``, not ``2.14.1+cu130``)."""
    return torch.__version__.split("+", 1)[0]


def ddp_no_forward_buffer_sync(ddp: type) -> dict[str, bool]:
    """The keyword that stops ``ddp`` (DistributedDataParallel) from broadcasting rank 0's buffers before
    every forward: ``forward_sync_buffers=False`` (torch >= 2.13), else ``broadcast_buffers=False``, which
    also leaves the buffers out of the constructor's first copy (``ddp_copies_buffers_at_start``)."""
    parameters = inspect.signature(ddp.__init__).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    if "broadcast_buffers" in parameters:
        return {"broadcast_buffers": False}
    raise UserError(f"several processes train under DistributedDataParallel, whose constructor in this torch "
                    f"({torch_version()}) takes neither forward_sync_buffers (torch >= 2.13) nor broadcast_buffers; "
                    f"install torch >= 2.4, as cl-run requires")


def ddp_copies_buffers_at_start(keywords: dict[str, bool]) -> bool:
    """Whether DDP built with ``keywords`` (``ddp_no_forward_buffer_sync``'s) still copies rank 0's buffers
    to every rank in its constructor: ``forward_sync_buffers`` does, ``broadcast_buffers=False`` does not."""
    return "forward_sync_buffers" in keywords


def foreach_lerp_(tensors: list[torch.Tensor], ends: list[torch.Tensor], weight: float | torch.Tensor) -> None:
    """``t += weight * (end - t)`` for every pair, in torch's fused multi-tensor kernels; ``weight`` a number or a
    0-dim tensor on the tensors' device (a flag computed there, never read). Sharded tensors (DTensors) are
    updated through their local shards, which the two lists hold alike."""
    tensors, ends = [_local(t) for t in tensors], [_local(t) for t in ends]
    if not tensors:
        return
    if not isinstance(weight, torch.Tensor):
        torch._foreach_lerp_(tensors, ends, weight)
    elif _lerp_takes_tensor_weight(tensors[0].device.type):
        torch._foreach_lerp_(tensors, ends, weight.to(tensors[0].dtype))
    else:  # a torch whose lerp takes no tensor weight: the same update in three fused steps
        deltas = torch._foreach_sub(ends, tensors)
        torch._foreach_mul_(deltas, weight)
        torch._foreach_add_(tensors, deltas)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


@functools.lru_cache(maxsize=None)
def _lerp_takes_tensor_weight(device_type: str) -> bool:
    probe = torch.zeros(1, device=device_type)
    try:
        torch._foreach_lerp_([probe], [torch.ones(1, device=device_type)], torch.full((), 0.5, device=device_type))
    except (TypeError, RuntimeError):
        return False
    return True


def fsdp2() -> Fsdp2:
    """FSDP2 from ``torch.distributed.fsdp`` (torch >= 2.6), else from its first place,
    ``torch.distributed._composable.fsdp`` (torch >= 2.4); a torch with neither is a user error."""
    for where in (FSDP_PUBLIC, FSDP_PROTOTYPE):
        module = _module(where)
        if module is not None and all(hasattr(module, name) for name in FSDP_NAMES):
            return Fsdp2(*(getattr(module, name) for name in FSDP_NAMES))
    raise UserError(f"train.strategy=fsdp needs FSDP2 (fully_shard and register_fsdp_forward_method: torch >= "
                    f"2.4's {FSDP_PROTOTYPE} or >= 2.6's {FSDP_PUBLIC}); this is torch {torch_version()}: "
                    f"upgrade torch or use train.strategy=ddp")


def fsdp_mixed_precision_policy() -> type:
    """FSDP2's ``MixedPrecisionPolicy`` from ``torch.distributed.fsdp`` (torch >= 2.6), else from
    ``torch.distributed._composable.fsdp`` (torch >= 2.4); a torch with neither is a user error."""
    for where in (FSDP_PUBLIC, FSDP_PROTOTYPE):
        module = _module(where)
        if module is not None and hasattr(module, FSDP_POLICY):
            return getattr(module, FSDP_POLICY)
    raise UserError(f"train.fsdp_param_dtype and train.fsdp_reduce_dtype need FSDP2's {FSDP_POLICY} (torch >= 2.4's "
                    f"{FSDP_PROTOTYPE} or >= 2.6's {FSDP_PUBLIC}); this is torch {torch_version()}: upgrade torch or "
                    f"set both to fp32")


def dcp_state_dict() -> ModuleType:
    """``torch.distributed.checkpoint.state_dict``: the sharded model's and optimizer's state dicts as DCP
    saves and loads them, and ``StateDictOptions``."""
    module = _module(DCP_STATE_DICT)
    missing = [name for name in DCP_STATE_DICT_NAMES if not hasattr(module, name)]
    if missing:
        raise UserError(f"sharded checkpoints (train.strategy=fsdp) need {DCP_STATE_DICT} with "
                        f"{', '.join(DCP_STATE_DICT_NAMES)} (torch >= 2.3); this is torch {torch_version()}, "
                        f"which lacks {', '.join(missing)}: upgrade torch")
    return module


def dcp_to_torch_save() -> Callable[[str, str], None]:
    """``format_utils.dcp_to_torch_save``: a sharded checkpoint gathered into one ``torch.save`` file."""
    module = _module(DCP_FORMAT_UTILS)
    if module is None or not hasattr(module, "dcp_to_torch_save"):
        raise UserError(f"reading a sharded checkpoint in one process needs {DCP_FORMAT_UTILS}.dcp_to_torch_save "
                        f"(torch >= 2.3); this is torch {torch_version()}: upgrade torch")
    return module.dcp_to_torch_save


def dcp_save_planner_lowest_rank() -> Any:
    """A DCP save planner that writes every replicated (unsharded) tensor from the lowest rank, rank 0."""
    from torch.distributed.checkpoint import DefaultSavePlanner

    if "dedup_save_to_lowest_rank" in inspect.signature(DefaultSavePlanner.__init__).parameters:
        return DefaultSavePlanner(dedup_save_to_lowest_rank=True)
    # Before the keyword, DCP deduplicated replicated tensors onto the lowest rank, always.
    return DefaultSavePlanner()


def _module(name: str) -> ModuleType | None:
    """The module ``name``, or None where this torch has no such module."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
