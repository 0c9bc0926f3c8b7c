"""Checkpoints: written atomically, read without pickle (``weights_only=True``).

A checkpoint is written to a temporary file in the same folder (so the rename cannot cross file
systems), flushed to disk, then renamed over the old one: a crash at any moment leaves either the
previous complete checkpoint or the new complete one, never a half-written file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clrun.errors import UserError

FILE = "checkpoint.pt"


def save_atomic(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path, command: str = "--resume") -> dict[str, Any]:
    """``command`` starts error messages: the option or command the path came from."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{command}: no checkpoint at {path}") from None
    except Exception as exc:
        raise UserError(f"{command}: {path} is not a readable cl-run checkpoint ({type(exc).__name__}: {exc})") from exc


def find(run_or_checkpoint: str | Path, command: str = "--resume") -> Path:
    """A checkpoint file from a run folder or a checkpoint path."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise UserError(f"{command}: no checkpoint at {path} (pass a run folder holding {FILE}, or the file itself)")
    return path


def rng_state() -> dict[str, Any]:
    """Every random stream the loop draws from, so a resumed run continues identically."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
