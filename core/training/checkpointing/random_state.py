"""Every random stream the training draws from, as a value a checkpoint holds and a resume sets back."""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """This process's random streams (torch, CUDA, NumPy, Python), so a resumed run continues identically.
    NumPy's key is stored as a tensor: a checkpoint is read without pickle, which refuses NumPy arrays."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Set this process's random streams to ``state`` (an ``rng_state()``); the CUDA ones as
    ``set_cuda_rng_states`` does."""
    torch.set_rng_state(state["torch"])
    set_cuda_rng_states(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def set_cuda_rng_states(saved: list[torch.Tensor]) -> None:
    """Set the CUDA devices' streams to ``saved`` (one state per device the saving process saw), device i to
    ``saved[i]``, on the first min(saved, visible) devices. A checkpoint holds every visible GPU's state, so
    a run resumed where another number of GPUs is visible (fewer: a smaller machine, ``CUDA_VISIBLE_DEVICES``)
    restores what both have, with a warning: the devices' streams then differ from the saved run's."""
    if not saved or not torch.cuda.is_available():
        return
    visible = torch.cuda.device_count()
    if len(saved) != visible:
        warnings.warn(f"the checkpoint holds the random state of {len(saved)} CUDA device(s) and this process sees "
                      f"{visible}: restoring the first {min(len(saved), visible)}", stacklevel=2)
    for index, state in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(state, index)
