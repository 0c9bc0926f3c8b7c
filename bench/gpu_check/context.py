"""What every section is given: the device, the scale, the Fashion-MNIST folder, the output files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gpu_check.scale import Scale


@dataclass(frozen=True)
class Context:
    device: torch.device
    scale: Scale
    fmnist_root: str | None  # None: the data set's default folder
    train_log: Path  # cl-run's console output of every run (kept out of the check's own lines)

    @property
    def device_name(self) -> str:
        return self.device.type
