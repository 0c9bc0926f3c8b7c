"""Process-wide settings of the training device, from the recipe: TF32 and cuDNN's algorithm search.

They are torch's global flags (torch has no per-model switch), set when a run is prepared. Nothing changes
on the CPU.
"""

from __future__ import annotations

import torch

from clrun.recipe.schema import TrainSection


def apply_device_settings(train: TrainSection, device: torch.device) -> None:
    """``train.tf32`` and ``train.cudnn_benchmark`` for a CUDA ``device``."""
    if device.type != "cuda":
        return
    # "high" lets fp32 matrix products use TF32; "highest" keeps them in full fp32. The same choice for
    # convolutions (cuDNN's own switch; torch enables it by default).
    torch.set_float32_matmul_precision("high" if train.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = train.tf32
    torch.backends.cudnn.benchmark = train.cudnn_benchmark


def describe_device_settings(train: TrainSection, device: torch.device) -> str:
    """One line for ``cl-run check -v``: what the device settings are for this run."""
    if device.type != "cuda":
        return f"device settings: none on {device.type} (train.tf32 and train.cudnn_benchmark apply on CUDA)"
    return f"device settings: tf32={'on' if train.tf32 else 'off'}, cudnn.benchmark={'on' if train.cudnn_benchmark else 'off'}"
