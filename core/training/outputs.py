"""What a loss receives: everything the networks produced in one step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from clrun.masks import Masks
from clrun.tokens import Tokens


@dataclass
class StepOutputs:
    """The step's outputs, per view. Index ``i`` of the per-view lists is view ``i`` in recipe order
    (a view with ``count: 2`` contributes two consecutive entries); every tensor has the batch's
    ``B`` rows in the same image order, so row ``n`` of every view comes from image ``n``.

    features:           online backbone features, each ``(B, F)``
    projections:        online projector outputs, each ``(B, D)``
    is_global:          whether view ``i`` is a global view (local views: multi-crop, usually smaller)
    predictions:        online predictor outputs, each ``(B, D')``; ``None`` when the recipe has no predictor
    target_projections: the momentum target network's projector outputs for the *global* views only,
                        in global-view order (entry ``k`` is the ``k``-th global view), each ``(B, D)``,
                        computed without gradient; ``None`` when the recipe has no target network
    step:               optimizer steps completed before this one (0 on the first step)
    total_steps:        optimizer steps the run will take in all
    masks:              with a ``masking:`` section, per view the ``clrun.Masks`` drawn for it (global views;
                        None for the others); else ``None``
    tokens:             with a ``masking:`` section, per view the online backbone's ``clrun.Tokens`` of the
                        masked view (None for the others); else ``None``
    target_tokens:      with ``masking:`` and ``target:`` sections, the target network's ``clrun.Tokens`` of the
                        whole global views, in global-view order, without gradient; else ``None``
    token_projections:  with ``masking.project_tokens``, per view the projector's output for every patch
                        token of ``tokens``, ``(B, N, D)`` (None for views without tokens); else ``None``
    target_token_projections: the same from the target network, per global view (whole views, no
                        gradient); ``None`` without ``project_tokens`` or ``target:``
    token_predictions:  with ``masking.head``, per view the token head's predictions for each target set's
                        patches, ``(B, M, T, D)`` (``clrun.Masks.at_targets`` gives what they predict: the
                        target's tokens, the view's pixels); None for views without a mask; else ``None``
    views:              the views themselves as the networks saw them (augmented, normalized), ``(B, C, H, W)``
                        each: the pixels a masked-image-modelling loss reconstructs

    A loss returns a scalar tensor, or a dict with ``"loss"`` and extra scalar metrics to log.
    """

    features: list[Tensor]
    projections: list[Tensor]
    is_global: list[bool]
    predictions: Optional[list[Tensor]] = None
    target_projections: Optional[list[Tensor]] = None
    step: int = 0
    total_steps: int = 1
    masks: Optional[list[Optional[Masks]]] = None
    tokens: Optional[list[Optional[Tokens]]] = None
    target_tokens: Optional[list[Tokens]] = None
    token_projections: Optional[list[Optional[Tensor]]] = None
    target_token_projections: Optional[list[Tensor]] = None
    token_predictions: Optional[list[Optional[Tensor]]] = None
    views: Optional[list[Tensor]] = None

    def _global(self, per_view: list[Tensor]) -> list[Tensor]:
        return [t for t, g in zip(per_view, self.is_global) if g]

    @property
    def global_features(self) -> list[Tensor]:
        return self._global(self.features)

    @property
    def global_projections(self) -> list[Tensor]:
        return self._global(self.projections)

    @property
    def global_predictions(self) -> Optional[list[Tensor]]:
        return None if self.predictions is None else self._global(self.predictions)
