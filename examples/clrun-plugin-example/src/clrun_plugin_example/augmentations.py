"""``example/RandomGaussianNoiseClamp``: a minimal batched augmentation.

cl-run runs a view's augmentations on the device, in batch, on float ``(B, C, H, W)`` images in
``[0, 1]`` (before the recipe's mean/std normalization). Any ``nn.Module`` with that contract works.
"""

from __future__ import annotations

from typing import Annotated

import torch
from clrun import Range, checked
from torch import Tensor, nn


@checked  # the Ranges below are enforced on direct construction too, as the recipe validator enforces them
class RandomGaussianNoiseClamp(nn.Module):
    """Add ``N(0, std^2)`` noise to each image with probability ``p``, then clamp it to ``[0, 1]``.

    Args:
        std: standard deviation of the noise, in units of the [0, 1] intensity range (>= 0).
        p: probability that an image is noised, drawn independently per image (0 to 1).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``, same dtype and device. Images not drawn are unchanged.
    """

    def __init__(self, std: Annotated[float, Range(min=0, hint="in units of the [0, 1] intensity range")] = 0.05,
                 p: Annotated[float, Range(min=0, max=1, hint="per image")] = 0.5):
        super().__init__()
        self.std = float(std)
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"std={self.std}, p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"{self.component_name} expects float (B, C, H, W) images, got {x.dtype} {tuple(x.shape)}"
            )
        chosen = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p
        noisy = (x + torch.randn_like(x) * self.std).clamp_(0.0, 1.0)
        return torch.where(chosen, noisy, x)
