"""``train.grad_cache_chunks``: exact gradient caching (Gao, Zhang, Han and Callan 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup"), for any loss over the whole batch.

1. The views, masks and target branch are made for the whole batch, as without caching.
2. The online network embeds the batch chunk by chunk without a graph; each chunk's random state (dropout,
   drop-path) is kept.
3. The loss runs once, on the whole batch's outputs made leaves: its value, its state updates (a center, a
   queue) and its parameters' gradients are those of the whole batch, and the leaves' gradients are cached.
4. Each chunk runs again, with its graph and its random state, and back-propagates its rows of the cached
   gradients into the network: the chain rule, one chunk's activations in memory at a time.

The gradients equal the whole batch's to float tolerance for a network without batch-dependent layers. With
BatchNorm, batch statistics are per chunk (as they are per process under DDP): the running statistics are
updated by step 2's chunks, once each, and step 4 leaves them as step 2 left them.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Optional

import torch
from torch import Tensor, nn

from clrun.training.forward import online_inputs, split_loss
from clrun.training.model.branch import Branch
from clrun.training.model.network import detached
from clrun.training.model.outputs import StepOutputs
from clrun.training.model.reads import branch_wants
from clrun.training.parallel.gradient_sync import average_gradients, gradient_sync
from clrun.training.parts import Parts
from clrun.training.split.rows import batch_ranges, concat, map_tensors, rows, tensors


class RandomState:
    """The random streams a forward pass draws from (the CPU's, and the device's on CUDA), to replay it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda: Optional[Tensor] = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def cached_backward(parts: Parts, images: Tensor, places: Tensor | None, count: int, step: int,
                    device: torch.device, autocast: Callable[[], ContextManager],
                    scaler: torch.amp.GradScaler) -> tuple[Tensor, dict[str, Tensor], StepOutputs]:
    """The whole batch's gradients (scaled by ``scaler``), its network run in ``count`` chunks; returns the
    loss and its metrics (detached) and the step's outputs."""
    network, wants = parts.network, branch_wants(parts.reads, "online")
    with autocast():
        given = online_inputs(parts, images, device, places)
    ranges = batch_ranges(len(images), count)

    def embed(part: range) -> Branch:
        with autocast():
            return network(rows(given.views, part), rows(given.masks, part), given.drop, wants)

    starts = []
    with torch.no_grad():
        pieces = []
        for part in ranges:
            starts.append(RandomState(device))
            pieces.append(embed(part))
    after = RandomState(device)
    statistics = [b.detach().clone() for b in network.buffers()]  # BatchNorm's, as the chunks left them
    # The outputs as leaves of the loss's graph: their gradients are what the chunks back-propagate.
    online = concat(pieces).map(lambda output: map_tensors(output, _leaf))
    del pieces
    out = StepOutputs(given.views, given.is_global, given.masks, online,
                      given.target if given.target is not None else Branch(), step, parts.total_steps)
    with autocast():
        loss, extras = split_loss(parts.loss_fn(out))
    scaler.scale(loss).backward()  # the loss's parameters' gradients, and the outputs' (cached on the leaves)
    cached = [leaf.grad for leaf in tensors(online)]
    for k, part in enumerate(ranges):
        starts[k].restore()
        with gradient_sync(parts.trainable, enabled=k == len(ranges) - 1):
            replayed = tensors(embed(part))
            pairs = [(t, g[part.start:part.stop]) for t, g in zip(replayed, cached) if g is not None and t.requires_grad]
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    after.restore()
    for buffer, saved in zip(network.buffers(), statistics):
        buffer.copy_(saved)
    if isinstance(parts.trainable, nn.parallel.DistributedDataParallel):
        average_gradients(parts.trainable)  # DDP's forward was not used: its hooks did not average them
    return loss.detach(), extras, detached(out)


def _leaf(t: Tensor) -> Tensor:
    return t.detach().requires_grad_(t.is_floating_point())
