"""MAE's loss: the mean squared error of the predicted pixels of the hidden patches."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from clrun import ComponentError, Masks, checked, loss_kit, name_of, patchify

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


def mae(prediction: Tensor, images: Tensor, grid: tuple[int, int], masks: Masks, norm_pix_loss: bool = True) -> Tensor:
    """MAE's loss of one masked view: the token head's ``prediction`` ``(B, M, T, P)`` of the pixels of the
    target patches of ``masks`` against those patches of ``images`` ``(B, C, H, W)`` (a ``grid`` of patches),
    standardized per patch with ``norm_pix_loss``: the mean squared error. At least float32, also under
    autocast. A ``ComponentError`` when the head's width is not a patch's pixel count."""
    dtype = loss_kit.compute_dtype(prediction, images)
    with loss_kit.autocast_off(prediction):
        target = masks.at_targets(pixel_targets(images.to(dtype), grid, norm_pix_loss))
        if target.shape != prediction.shape:
            raise ComponentError(f"the token head predicts {tuple(prediction.shape)} values at the hidden patches, "
                                 f"their pixels are {tuple(target.shape)}: the head's output width must be the "
                                 f"patch's pixel count ({target.shape[-1]})")
        return (prediction.to(dtype) - target).square().mean()


@checked
class MAELoss(nn.Module):
    r"""He et al. (2022), "Masked Autoencoders Are Scalable Vision Learners": for every masked view, the
    token head's (``clrun/mae_decoder``) prediction ``p`` of each hidden patch's pixels against the view's
    own pixels ``x`` of that patch (as the networks saw them: augmented and normalized),

        loss = mean over hidden patches of  mean_j (p_j - x_j)^2,

    with ``x`` standardized per patch when ``norm_pix_loss`` (the paper's better setting, its default
    here). Visible patches are not scored. The math runs in at least float32.
    """

    reads = frozenset({"online.token_predictions", "masks", "views", "online.tokens"})  # tokens: the patch grid
    # Each image's hidden patches against its own pixels; with one hidden count per image (dropping
    # generators keep one), the mean over all hidden patches is the mean of the images' means.
    per_image_mean = True

    def __init__(self, norm_pix_loss: bool = True) -> None:
        super().__init__()
        self.norm_pix_loss = norm_pix_loss

    def forward(self, out: Any) -> Tensor:
        predicted = loss_kit.required_token_predictions(self, out, EXAMPLE)
        losses = []
        with loss_kit.autocast_off(predicted[0][1]):  # the mean of the views' losses too
            for i, prediction in predicted:
                try:
                    losses.append(mae(prediction, out.views[i], out.tokens[i].grid, out.masks[i], self.norm_pix_loss))
                except ComponentError as error:
                    raise ComponentError(f"{name_of(self)}: {error}") from None
            return torch.stack(losses).mean()
