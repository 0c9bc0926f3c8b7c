"""The check's own components, offered in this process's registry only (as ``bench/clrun_timed.py`` offers
its timer): a run callback that watches the steps, and a data set of random images that costs nothing to make."""

from __future__ import annotations

from typing import Annotated

import clrun
import torch
from clrun import Range
from torch.utils.data import Dataset

PROBE = "bench/gpu_check_probe"
NOISE = "bench/noise_images"


class NoiseImages(Dataset):
    """``num_images`` uint8 images of uniform noise, ``channels`` x ``size`` x ``size``, all labeled 0.

    For measurements that do not look at the pixels (throughput, syncs, compile): the views' kornia ops cost
    the same on noise as on photos, and 2,000 of them at 256 px are made in a second where ``clrun/synthetic``'s
    float64 stripes take a minute on 2 cores."""

    def __init__(self, num_images: Annotated[int, Range(min=1)] = 256, size: Annotated[int, Range(min=1)] = 256,
                 channels: Annotated[int, Range(min=1)] = 3, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (num_images, channels, size, size), dtype=torch.uint8, generator=generator)
        self.targets = torch.zeros(num_images, dtype=torch.long)
        self.classes = ["noise"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], 0


def register() -> None:
    """Offer both components (once per process)."""
    from clrun.plugin_manager import default_registry

    from gpu_check.probe import Probe

    registry = default_registry()
    for kind, name, factory, summary in (("callback", PROBE, Probe, "watches training steps (bench/gpu_check.py)"),
                                         ("dataset", NOISE, NoiseImages, "random uint8 images (bench/gpu_check.py)")):
        if not registry.list(kind, name):
            registry.add(clrun.Component(kind, name, factory, summary), "bench")
