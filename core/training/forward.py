"""A step's forward pass: the views on the device, their masks, the target network's branch and the online
network with the loss; and what a loss returns, taken apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from clrun.masks import Masks
from clrun.training.model.branch import Branch
from clrun.training.model.outputs import StepOutputs
from clrun.training.model.reads import branch_wants
from clrun.training.parts import Parts


def split_loss(result: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """A loss returns a scalar tensor or ``{"loss": tensor, **metrics}``."""
    if isinstance(result, Tensor):
        return result, {}
    if isinstance(result, dict) and isinstance(result.get("loss"), Tensor):
        extras = {k: torch.as_tensor(v).detach() for k, v in result.items() if k != "loss"}
        return result["loss"], extras
    raise TypeError(f"a loss must return a scalar tensor or a dict with 'loss'; got {type(result).__name__}")


@dataclass
class OnlineInputs:
    """What the online network and the loss take besides the weights: the batch's views (``is_global`` says
    which are global), their masks (with a ``masking:`` section; ``drop``: hidden patches left out) and the
    target network's branch on the global views (None without one)."""

    views: list[Tensor]
    is_global: list[bool]
    masks: Optional[list[Optional[Masks]]]
    drop: bool
    target: Optional[Branch]


def online_inputs(parts: Parts, images: Tensor, device: torch.device, places: Tensor | None = None) -> OnlineInputs:
    """Views on the device (cropped inside each image's ``places`` when the data set letterboxes: they stay
    on the CPU, where the crops are drawn), their masks, and the target network's branch on the global ones
    (no gradient), making the optional outputs ``parts.reads`` names."""
    # Outside the step's autocast: augmentations (blurs, colour maths) in the views' own precision, fp32,
    # not cast to bf16 and back op by op.
    with torch.autocast(device.type, enabled=False):
        views = parts.views(images.to(device, non_blocking=True), places)
        is_global = parts.views.is_global
        masking = parts.masking
        masks = masking.draw(parts.network.backbone, views, is_global) if masking is not None else None
    target = None
    if parts.target is not None:
        target = parts.target([v for v, g in zip(views, is_global) if g], branch_wants(parts.reads, "target"))
    return OnlineInputs(views, list(is_global), masks, masking is not None and masking.drop, target)


def forward_and_loss(parts: Parts, images: Tensor, device: torch.device, step: int,
                     places: Tensor | None = None) -> tuple[Any, StepOutputs]:
    """The online network and the loss (``parts.trainable``, DDP-wrapped when several processes train) on
    ``online_inputs``: the loss's result and the step's outputs (detached)."""
    given = online_inputs(parts, images, device, places)
    return parts.trainable(given.views, given.is_global, given.target, step, parts.total_steps, given.masks,
                           given.drop, branch_wants(parts.reads, "online"))
