"""``train.accumulate_steps``: each batch in N micro-batches, one forward and backward each, and one optimizer
step. The loss of the batch is the mean of the micro-batches' losses weighted by their sizes, which is the
loss of the whole batch only for a loss that is a mean of per-image terms (``clrun.training.split.per_image``
says which are, and refuses the others).

Under DDP the micro-steps' backwards run under ``no_sync``; the last one averages the sum. ``max_steps``, the
schedules and the checkpoints count optimizer steps: the loop sees one batch per optimizer step.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor

from clrun.training.forward import forward_and_loss, split_loss
from clrun.training.model.outputs import StepOutputs
from clrun.training.parallel.gradient_sync import gradient_sync
from clrun.training.parts import Parts
from clrun.training.split.rows import batch_ranges, concat

def accumulated_backward(parts: Parts, images: Tensor, places: Tensor | None, count: int, step: int,
                         device: torch.device, autocast: Callable[[], ContextManager],
                         scaler: torch.amp.GradScaler) -> tuple[Tensor, dict[str, Tensor], StepOutputs]:
    """The batch's gradients (scaled by ``scaler``) accumulated from ``count`` micro-batches (``count`` 1: the
    whole batch at once); returns the batch's loss and metrics (size-weighted means, detached) and outputs."""
    size = len(images)
    ranges = batch_ranges(size, count)
    loss_sum: Tensor | float = 0.0
    extra_sums: dict[str, Any] = defaultdict(float)
    outputs = []
    for k, part in enumerate(ranges):
        weight = len(part) / size
        with gradient_sync(parts.trainable, enabled=k == len(ranges) - 1):
            with autocast():
                result, out = forward_and_loss(parts, images[part.start:part.stop], device, step,
                                               None if places is None else places[part.start:part.stop])
                loss, extras = split_loss(result)
            scaler.scale(loss if weight == 1 else loss * weight).backward()
        loss_sum = loss_sum + loss.detach() * weight
        for name, value in extras.items():
            extra_sums[name] = extra_sums[name] + value * weight
        outputs.append(out)
    whole = outputs[0] if len(outputs) == 1 else concat_outputs(outputs)
    return loss_sum, dict(extra_sums), whole  # type: ignore[return-value]


def concat_outputs(pieces: list[StepOutputs]) -> StepOutputs:
    """The whole batch's outputs from its micro-batches' (what the step's callbacks see)."""
    first = pieces[0]
    masks = None if first.masks is None else concat([p.masks for p in pieces])
    return StepOutputs(concat([p.views for p in pieces]), first.is_global, masks,
                       concat([p.online for p in pieces]), concat([p.target for p in pieces]),
                       first.step, first.total_steps)
