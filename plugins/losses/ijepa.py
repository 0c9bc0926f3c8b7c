"""I-JEPA's loss: smooth L1 between the predicted and the target encoder's (layer-normed) patch tokens."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import ComponentError, Masks, Range, checked, loss_kit, name_of

EXAMPLE = ("masking: {generator: {name: clrun/multiblock_mask}, hidden: drop, head: {name: clrun/jepa_predictor}} "
           "and a target: section (recipes/ijepa_fmnist.yaml)")


def ijepa(prediction: Tensor, target_tokens: Tensor, masks: Masks, beta: float = 1.0) -> Tensor:
    """I-JEPA's loss of one masked view: the token head's ``prediction`` ``(B, M, T, E)`` of the target
    patches of ``masks`` against the target encoder's patch tokens ``(B, L, E)`` of the whole view,
    layer-normalized without affine parameters: smooth L1 with ``beta``. At least float32, also under
    autocast. A ``ComponentError`` when the shapes disagree."""
    with loss_kit.autocast_off(prediction):
        dtype = loss_kit.compute_dtype(prediction, target_tokens)
        target = F.layer_norm(target_tokens.to(dtype), target_tokens.shape[-1:])
        target = masks.at_targets(target)
        if target.shape != prediction.shape:
            raise ComponentError(f"the token head predicts {tuple(prediction.shape)} at the target patches, the "
                                 f"target's tokens there are {tuple(target.shape)}")
        return F.smooth_l1_loss(prediction.to(dtype), target, beta=beta)


@checked
class IJEPALoss(nn.Module):
    r"""Assran et al. (2023), "Self-Supervised Learning from Images with a Joint-Embedding Predictive
    Architecture": for every masked view (the context), the token head's (``clrun/jepa_predictor``)
    prediction ``z`` of each target block's patch tokens against the momentum target encoder's tokens of
    the whole view, layer-normalized without affine parameters, ``h = LN(target tokens)``:

        loss = mean over target blocks, patches and dimensions of smooth_l1(z - h; beta)

    (``beta`` 1, PyTorch's default, as the official code). The target receives no gradient. The math runs
    in at least float32.
    """

    reads = frozenset({"online.token_predictions", "target.tokens", "masks"})
    # Each image's predicted patches against its own target tokens, one target count per image.
    per_image_mean = True

    def __init__(self, beta: Annotated[float, Range(min=0, exclusive_min=True, hint="the official code uses 1")] = 1.0) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, out: Any) -> Tensor:
        predicted = loss_kit.required_token_predictions(self, out, EXAMPLE)
        if out.target_tokens is None:
            raise ComponentError(f"{name_of(self)} predicts the momentum target encoder's patch tokens: add a target: "
                                 "section to the recipe (e.g. momentum: 0.996)")
        global_order = [i for i, g in enumerate(out.is_global) if g]
        losses = []
        with loss_kit.autocast_off(predicted[0][1]):  # the mean of the views' losses too
            for i, prediction in predicted:
                target = out.target_tokens[global_order.index(i)].patches
                try:
                    losses.append(ijepa(prediction, target, out.masks[i], self.beta))
                except ComponentError as error:
                    raise ComponentError(f"{name_of(self)}: {error}") from None
            return torch.stack(losses).mean()
