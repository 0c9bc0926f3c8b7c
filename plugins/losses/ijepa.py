"""I-JEPA's loss: smooth L1 between the predicted and the target encoder's (layer-normed) patch tokens."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import ComponentError, loss_kit

OWNER = "clrun/ijepa"
EXAMPLE = ("masking: {generator: {name: clrun/multiblock_mask}, hidden: drop, head: {name: clrun/jepa_predictor}} "
           "and a target: section (recipes/ijepa_fmnist.yaml)")


class IJEPALoss(nn.Module):
    r"""Assran et al. (2023), "Self-Supervised Learning from Images with a Joint-Embedding Predictive
    Architecture": for every masked view (the context), the token head's (``clrun/jepa_predictor``)
    prediction ``z`` of each target block's patch tokens against the momentum target encoder's tokens of
    the whole view, layer-normalized without affine parameters, ``h = LN(target tokens)``:

        loss = mean over target blocks, patches and dimensions of smooth_l1(z - h; beta)

    (``beta`` 1, PyTorch's default, as the official code). The target receives no gradient. The math runs
    in at least float32.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = loss_kit.float_arg(OWNER, "beta", beta, minimum=0.0, hint=" (the official code uses 1)")

    def forward(self, out: Any) -> Tensor:
        predicted = loss_kit.required_token_predictions(OWNER, out, EXAMPLE)
        if out.target_tokens is None:
            raise ComponentError(f"{OWNER} predicts the momentum target encoder's patch tokens: add a target: section "
                                 "to the recipe (e.g. momentum: 0.996)")
        global_order = [i for i, g in enumerate(out.is_global) if g]
        losses = []
        with loss_kit.autocast_off(predicted[0][1]):
            for i, prediction in predicted:
                target = out.target_tokens[global_order.index(i)].patches
                dtype = loss_kit.compute_dtype(prediction, target)
                target = F.layer_norm(target.to(dtype), target.shape[-1:])
                target = out.masks[i].at_targets(target)
                if target.shape != prediction.shape:
                    raise ComponentError(f"{OWNER}: the token head predicts {tuple(prediction.shape)} at the target "
                                         f"patches, the target's tokens there are {tuple(target.shape)}")
                losses.append(F.smooth_l1_loss(prediction.to(dtype), target, beta=self.beta))
        return torch.stack(losses).mean()
