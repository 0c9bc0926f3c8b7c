"""What a loss receives: everything the views produced in one step."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class StepOutputs:
    """The online network's outputs for one batch, per view (index i is view i in recipe order).

    features:     backbone features, each (B, F)
    projections:  projector outputs, each (B, D)
    is_global:    whether view i is a global view (local views: multi-crop)

    A loss returns a scalar tensor, or a dict with ``"loss"`` and extra scalar metrics to log.
    """

    features: list[Tensor]
    projections: list[Tensor]
    is_global: list[bool]

    @property
    def global_projections(self) -> list[Tensor]:
        return [p for p, g in zip(self.projections, self.is_global) if g]
