"""What one optimizer step differentiates: the online network and the loss, as one module.

The loss belongs in it because a loss may have parameters (learned prototypes): wrapped in
DistributedDataParallel, this module's gradients, the loss's included, are averaged over ranks.
The momentum target network stays outside: it gets no gradients, and every rank updates its copy
identically from the (identical) online weights.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from clrun import distributed
from clrun.training.outputs import StepOutputs


class Trainable(nn.Module):
    def __init__(self, network: nn.Module, loss_fn: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.loss_fn = loss_fn

    def forward(self, views: list[Tensor], is_global: list[bool], targets: Optional[list[Tensor]],
                step: int, total_steps: int) -> tuple[Any, StepOutputs]:
        features, projections, predictions = self.network(views)
        out = StepOutputs(features, projections, list(is_global), predictions, targets, step, total_steps)
        return self.loss_fn(out), out


def distribute(trainable: Trainable, device: torch.device) -> nn.Module:
    """``trainable`` wrapped in DistributedDataParallel when several processes train, else itself.

    Buffers are not broadcast from rank 0 on every step: BatchNorm statistics stay per rank (as in
    most SSL code; SyncBatchNorm is the recipe option that makes them global), and a loss's state
    (a queue of keys) is kept identical by the loss itself. The constructor still copies rank 0's
    parameters and buffers to every rank once.
    """
    if not distributed.active():
        return trainable
    # A loss with parameters may leave them out of some steps' graphs (prototypes frozen
    # for the first steps); DDP must then look for unused parameters, at a small cost per step.
    loss_has_params = any(p.requires_grad for p in trainable.loss_fn.parameters())
    return nn.parallel.DistributedDataParallel(
        trainable,
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
        find_unused_parameters=loss_has_params,
    )
