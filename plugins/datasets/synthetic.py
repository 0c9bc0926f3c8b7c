"""A small deterministic labeled data set for tests and smoke runs: no files needed."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch.utils.data import Dataset

from clrun import Range, checked

Count = Annotated[int, Range(min=1)]

# Orientations used before the stripe frequency changes: 8 steps of 22.5 degrees stay easy to tell apart.
_ORIENTATIONS = 8


@checked
class Synthetic(Dataset):
    """Striped images whose class decides the stripes' orientation and frequency.

    Class k has stripes at angle 180 * (k mod 8) / 8 degrees with 2 + k // 8 cycles across the image; each
    image adds a random phase (a shift of the stripes), a random per-channel contrast and pixel noise. The
    classes are therefore learnable (a linear probe on good features separates them) while no two
    images are equal. Everything is drawn once, in ``__init__``, from a generator seeded with ``seed``.

    num_images:  number of images (labels are balanced: item counts per class differ by at most one).
    num_classes: number of classes.
    size:        side of the square images.
    channels:    channels per image.
    seed:        seed of every random draw; the same arguments give the same tensors on any machine.
    """

    def __init__(self, num_images: Count = 512, num_classes: Count = 4, size: Count = 32, channels: Count = 3,
                 seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(num_images) % num_classes
        labels = labels[torch.randperm(num_images, generator=generator)]

        angle = math.pi * (labels % _ORIENTATIONS).double() / _ORIENTATIONS
        cycles = 2.0 + (labels // _ORIENTATIONS).double()
        phase = 2 * math.pi * torch.rand(num_images, generator=generator, dtype=torch.float64)
        contrast = 0.6 + 0.4 * torch.rand(num_images, channels, 1, 1, generator=generator, dtype=torch.float64)

        coords = torch.arange(size, dtype=torch.float64) / size
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        # Position along each image's stripe direction, (N, H, W).
        along = x * angle.cos()[:, None, None] + y * angle.sin()[:, None, None]
        wave = torch.sin(2 * math.pi * cycles[:, None, None] * along + phase[:, None, None])
        noise = torch.randn(num_images, channels, size, size, generator=generator, dtype=torch.float64)
        pixels = 128 + 80 * contrast * wave[:, None] + 20 * noise
        self.images: torch.Tensor = pixels.round().clamp(0, 255).to(torch.uint8)  # (N, C, H, W)
        self.targets: torch.Tensor = labels
        self.classes: list[str] = [f"class_{k}" for k in range(num_classes)]
        self.image_shape: tuple[int, int, int] = (channels, size, size)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])
