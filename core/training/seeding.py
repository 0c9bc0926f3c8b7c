"""The random streams of a run's processes: one seed for everything a build draws (identical weights on every
rank), then each rank's own stream for its augmentations."""

from __future__ import annotations

import random

import numpy as np
import torch

from clrun import distributed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_augmentations(seed: int) -> None:
    """After the (identical) build, each rank draws its own augmentations; rank 0 keeps the stream a
    single-process run has."""
    rank = distributed.rank()
    if rank:
        seed_everything(seed + 1_000_003 * rank)
