"""MAE's loss: the mean squared error of the predicted pixels of the hidden patches."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from clrun import ComponentError, loss_kit, patchify

OWNER = "clrun/mae"
EXAMPLE = ("masking: {generator: {name: clrun/random_mask}, hidden: drop, head: {name: clrun/mae_decoder}} "
           "(recipes/mae_fmnist.yaml)")


def pixel_targets(images: Tensor, grid: tuple[int, int], normalize: bool) -> Tensor:
    """``(B, L, P)`` each patch's pixels (``clrun.patchify``); with ``normalize``, standardized per patch by
    its own mean and (unbiased) variance plus 1e-6, as MAE's ``norm_pix_loss``."""
    target = patchify(images, grid)
    if normalize:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return target


class MAELoss(nn.Module):
    r"""He et al. (2022), "Masked Autoencoders Are Scalable Vision Learners": for every masked view, the
    token head's (``clrun/mae_decoder``) prediction ``p`` of each hidden patch's pixels against the view's
    own pixels ``x`` of that patch (as the networks saw them: augmented and normalized),

        loss = mean over hidden patches of  mean_j (p_j - x_j)^2,

    with ``x`` standardized per patch when ``norm_pix_loss`` (the paper's better setting, its default
    here). Visible patches are not scored. The math runs in at least float32.
    """

    def __init__(self, norm_pix_loss: bool = True) -> None:
        super().__init__()
        if not isinstance(norm_pix_loss, bool):
            raise ComponentError(f"{OWNER}: norm_pix_loss must be true or false, got {norm_pix_loss!r}")
        self.norm_pix_loss = norm_pix_loss

    def forward(self, out: Any) -> Tensor:
        predicted = loss_kit.required_token_predictions(OWNER, out, EXAMPLE)
        losses = []
        with loss_kit.autocast_off(predicted[0][1]):
            for i, prediction in predicted:
                dtype = loss_kit.compute_dtype(prediction, out.views[i])
                target = pixel_targets(out.views[i].to(dtype), out.tokens[i].grid, self.norm_pix_loss)
                target = out.masks[i].at_targets(target)
                if target.shape != prediction.shape:
                    raise ComponentError(f"{OWNER}: the token head predicts {tuple(prediction.shape)} values at the "
                                         f"hidden patches, their pixels are {tuple(target.shape)}: the head's output "
                                         f"width must be the patch's pixel count ({target.shape[-1]})")
                losses.append((prediction.to(dtype) - target).square().mean())
        return torch.stack(losses).mean()
