"""What a loss receives: everything the networks produced in one step, by branch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor

from clrun.masks import Masks
from clrun.training.model.branch import Branch
from clrun.training.model.flat_outputs import FlatNames, from_flat, is_flat_call


@dataclass(init=False)
class StepOutputs(FlatNames):
    """The step's outputs. Index ``i`` of the per-view lists is view ``i`` in recipe order (a view with
    ``count: 2`` contributes two consecutive entries); every tensor has the batch's ``B`` rows in the same
    image order, so row ``n`` of every view comes from image ``n``.

    views:       the views as the networks saw them (augmented, normalized), ``(B, C, H, W)`` each: the
                 pixels a masked-image-modelling loss reconstructs
    is_global:   whether view ``i`` is a global view (local views: multi-crop, usually smaller)
    masks:       with a ``masking:`` section, per view the ``clrun.Masks`` drawn for it (global views; None
                 for the others); else None
    online:      the online network's ``clrun.Branch``, per view: ``features``, ``projections``, and as the
                 recipe makes them ``predictions``, ``tokens`` (of the masked views), ``token_projections``,
                 ``token_predictions``
    target:      the momentum target network's ``clrun.Branch``, per *global* view in global-view order
                 (entry ``k`` is the ``k``-th global view, seen whole), computed without gradient:
                 ``projections``, and with ``masking:`` ``tokens`` and ``token_projections``; an empty
                 branch without a ``target:`` section
    step:        optimizer steps completed before this one (0 on the first step)
    total_steps: optimizer steps the run will take in all

    An output the step did not produce is absent from its branch: reading ``out.target.projections``
    without a target network raises ``MissingOutput`` (a ``clrun.ComponentError``) that says what the
    recipe needs. A loss declares what it reads (``reads``, see ``clrun.training.model.reads``), so the build
    refuses such a recipe before any step; ``out.has("target.projections")`` asks.

    The flat names of earlier releases stay: the properties ``features``, ``projections``,
    ``predictions``, ``tokens``, ``token_projections``, ``token_predictions`` (the online branch's),
    ``target_projections``, ``target_tokens``, ``target_token_projections`` (the target's),
    ``global_features``, ``global_projections``, ``global_predictions``, which return None for an absent
    output as they did; and the flat constructor, ``StepOutputs(features, projections, is_global,
    predictions=..., target_projections=..., ...)``.

    A loss returns a scalar tensor, or a dict with ``"loss"`` and extra scalar metrics to log.
    """

    views: list[Tensor]
    is_global: list[bool]
    masks: Optional[list[Optional[Masks]]]
    online: Branch
    target: Branch
    step: int
    total_steps: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if is_flat_call(args, kwargs):
            args, kwargs = (), from_flat(*args, **kwargs)
        self._set(*args, **kwargs)

    def _set(self, views: list[Tensor], is_global: list[bool], masks: Optional[list[Optional[Masks]]],
             online: Branch, target: Optional[Branch] = None, step: int = 0, total_steps: int = 1) -> None:
        self.views, self.is_global, self.masks = list(views), list(is_global), masks
        self.online, self.target = online, Branch() if target is None else target
        self.step, self.total_steps = step, total_steps
        for role in ("online", "target"):  # a branch's errors name it: "target.projections is not ..."
            object.__setattr__(getattr(self, role), "_role", role)

    def has(self, read: str) -> bool:
        """Whether the step holds ``read`` (``"target.projections"``, ``"masks"``, ``"views"``)."""
        role, _, name = read.partition(".")
        if role in ("online", "target") and name:
            return name in getattr(self, role)
        return getattr(self, read, None) is not None
