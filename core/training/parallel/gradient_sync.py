"""When a step's gradients are averaged over the processes, for a step whose batch goes through in parts
(``clrun.training.split``): once, after the last part, not after every backward.

Unsharded (DDP), the parts' backwards run under ``no_sync`` and DDP averages the sum at the last one. A
gradient-cached step does not go through DDP's forward at all (it calls the network and the loss apart):
its gradients are averaged by ``average_gradients``, as DDP would average them. Sharded (FSDP2), each unit
keeps its unsharded gradients until the last part (``set_requires_gradient_sync``) and reduce-scatters them
then.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from clrun import distributed


@contextmanager
def gradient_sync(trainable: nn.Module, enabled: bool) -> Iterator[None]:
    """Backwards inside the block average (or reduce-scatter) the gradients over the processes only when
    ``enabled``; otherwise they add up locally, to be averaged with the next backward that is."""
    if enabled or not distributed.active():
        yield
        return
    if isinstance(trainable, nn.parallel.DistributedDataParallel):
        with trainable.no_sync():
            yield
        return
    units = sharded_units(trainable)
    for unit in units:
        unit.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_requires_gradient_sync(True, recurse=False)


def sharded_units(module: nn.Module) -> list[nn.Module]:
    """The FSDP2 units inside ``module`` (none in an unsharded one): the modules FSDP2 gave its methods."""
    return [m for m in module.modules() if callable(getattr(m, "set_requires_gradient_sync", None))]


def average_gradients(module: nn.Module) -> None:
    """Every trainable parameter's gradient in ``module`` replaced by its mean over the processes, in two
    collectives, as DDP's backward leaves them: a parameter no process gave a gradient keeps None (the
    optimizer skips it), one that only some did counts zero for the others."""
    if not distributed.active():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(has)
    reduced = [p for p, count in zip(params, has.tolist()) if count]
    if not reduced:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in reduced])
    torch.distributed.all_reduce(flat)
    flat /= distributed.world_size()
    for p, piece in zip(reduced, flat.split([p.numel() for p in reduced])):
        p.grad = piece.view_as(p).to(p.dtype)
