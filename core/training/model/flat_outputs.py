"""The flat names of ``clrun.StepOutputs`` from before it held two branches, kept so that losses, callbacks
and tests written against them work unchanged: the properties (``out.target_projections``...), which return
None for an absent output as they always did, and the flat constructor
(``StepOutputs(features, projections, is_global, predictions=..., target_projections=...)``)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import Tensor

from clrun.tokens import Tokens
from clrun.training.model.branch import Branch

# Flat name -> (branch, output). A new output is reached as out.online.<name> / out.target.<name> only.
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "features": ("online", "features"),
    "projections": ("online", "projections"),
    "predictions": ("online", "predictions"),
    "tokens": ("online", "tokens"),
    "token_projections": ("online", "token_projections"),
    "token_predictions": ("online", "token_predictions"),
    "target_projections": ("target", "projections"),
    "target_tokens": ("target", "tokens"),
    "target_token_projections": ("target", "token_projections"),
}


def is_flat_call(args: tuple, kwargs: dict) -> bool:
    """Whether a ``StepOutputs(...)`` call uses the flat signature: a flat keyword, or a second positional
    argument that is a list of tensors (the projections) where the branch signature has ``is_global``."""
    if any(name in FLAT_NAMES for name in kwargs):
        return True
    return len(args) >= 2 and any(isinstance(v, Tensor) for v in args[1])


def from_flat(features: Sequence[Tensor], projections: Sequence[Tensor], is_global: Sequence[bool],
              predictions: Optional[Sequence[Tensor]] = None, target_projections: Optional[Sequence[Tensor]] = None,
              step: int = 0, total_steps: int = 1, masks: Optional[Sequence[Any]] = None,
              tokens: Optional[Sequence[Optional[Tokens]]] = None, target_tokens: Optional[Sequence[Tokens]] = None,
              token_projections: Optional[Sequence[Optional[Tensor]]] = None,
              target_token_projections: Optional[Sequence[Tensor]] = None,
              token_predictions: Optional[Sequence[Optional[Tensor]]] = None,
              views: Optional[Sequence[Tensor]] = None) -> dict[str, Any]:
    """The branch signature's arguments for a call with the flat one (its parameters, in its order)."""
    online = Branch(features=features, projections=projections, predictions=predictions, tokens=tokens,
                    token_projections=token_projections, token_predictions=token_predictions)
    target = Branch(projections=target_projections, tokens=target_tokens, token_projections=target_token_projections)
    return {"views": [] if views is None else list(views), "is_global": list(is_global),
            "masks": None if masks is None else list(masks), "online": online, "target": target,
            "step": step, "total_steps": total_steps}


class FlatNames:
    """The flat properties of a ``StepOutputs``: each returns its branch's output, or None when absent."""

    online: Branch
    target: Branch
    is_global: list[bool]

    def _global(self, per_view: Optional[list[Any]]) -> Optional[list[Any]]:
        return None if per_view is None else [t for t, g in zip(per_view, self.is_global) if g]

    @property
    def features(self) -> Optional[list[Tensor]]:
        """``online.features``: the backbone's features per view."""
        return self.online.get("features")

    @property
    def projections(self) -> Optional[list[Tensor]]:
        """``online.projections``: the projector's outputs per view."""
        return self.online.get("projections")

    @property
    def predictions(self) -> Optional[list[Tensor]]:
        """``online.predictions``: the predictor's outputs per view; None without a predictor."""
        return self.online.get("predictions")

    @property
    def tokens(self) -> Optional[list[Optional[Tokens]]]:
        """``online.tokens``: the masked views' tokens (None for the others); None without masking."""
        return self.online.get("tokens")

    @property
    def token_projections(self) -> Optional[list[Optional[Tensor]]]:
        """``online.token_projections``: the projector over every patch token; None when not computed."""
        return self.online.get("token_projections")

    @property
    def token_predictions(self) -> Optional[list[Optional[Tensor]]]:
        """``online.token_predictions``: the token head's predictions; None without a token head."""
        return self.online.get("token_predictions")

    @property
    def target_projections(self) -> Optional[list[Tensor]]:
        """``target.projections``: per global view; None without a target network."""
        return self.target.get("projections")

    @property
    def target_tokens(self) -> Optional[list[Tokens]]:
        """``target.tokens``: the target's tokens of the whole global views; None when not computed."""
        return self.target.get("tokens")

    @property
    def target_token_projections(self) -> Optional[list[Tensor]]:
        """``target.token_projections``: per global view; None when not computed."""
        return self.target.get("token_projections")

    @property
    def global_features(self) -> Optional[list[Tensor]]:
        """The global views' ``features``."""
        return self._global(self.features)

    @property
    def global_projections(self) -> Optional[list[Tensor]]:
        """The global views' ``projections``."""
        return self._global(self.projections)

    @property
    def global_predictions(self) -> Optional[list[Tensor]]:
        """The global views' ``predictions``; None without a predictor."""
        return self._global(self.predictions)
