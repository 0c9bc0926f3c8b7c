"""``example/RandomGaussianNoiseClamp``: a minimal batched augmentation.

cl-run runs a view's augmentations on the device, in batch, on float ``(B, C, H, W)`` images in
``[0, 1]`` (before the recipe's mean/std normalization). Any ``nn.Module`` with that contract works.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class RandomGaussianNoiseClamp(nn.Module):
    """Add ``N(0, std^2)`` noise to each image with probability ``p``, then clamp it to ``[0, 1]``.

    Args:
        std: standard deviation of the noise, in units of the [0, 1] intensity range (>= 0).
        p: probability that an image is noised, drawn independently per image (0 to 1).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``, same dtype and device. Images not drawn are unchanged.
    """

    def __init__(self, std: float = 0.05, p: float = 0.5):
        super().__init__()
        for name, value in (("std", std), ("p", p)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"example/RandomGaussianNoiseClamp: {name} must be a finite number, got {value!r}")
        if std < 0:
            raise ValueError(f"example/RandomGaussianNoiseClamp: std must be >= 0, got {std!r}")
        if not 0 <= p <= 1:
            raise ValueError(f"example/RandomGaussianNoiseClamp: p must be between 0 and 1, got {p!r}")
        self.std = float(std)
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"std={self.std}, p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"example/RandomGaussianNoiseClamp expects float (B, C, H, W) images, got {x.dtype} {tuple(x.shape)}"
            )
        chosen = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p
        noisy = (x + torch.randn_like(x) * self.std).clamp_(0.0, 1.0)
        return torch.where(chosen, noisy, x)
