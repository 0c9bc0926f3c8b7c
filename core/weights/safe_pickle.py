"""Read a ``torch.save`` file without running code: torch's weights-only unpickler, with an explicit allowlist
of the few harmless objects that training scripts save beside their tensors.

Official checkpoints are pickles: many hold the training run's ``argparse.Namespace``, some hold
paths or NumPy scalars. A full unpickler would run whatever a file asks for (``os.system`` included), so
cl-run never uses one: the objects below are rebuilt from their data only (a class allowlisted here is
created and its ``__dict__`` filled, no method of the file's choosing runs), anything else is refused with
the object's name.
"""

from __future__ import annotations

import argparse
import pathlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clrun.errors import UserError


def _numpy_scalars() -> list:
    """NumPy's scalar reconstructor and dtypes (a saved ``np.float64(0.5)`` needs them); absent names in
    older or newer NumPy releases are skipped."""
    multiarray = getattr(np, "_core", None) or np.core
    allowed = [multiarray.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                                        "BoolDType") if hasattr(dtypes, name)]
    return allowed


ALLOWED: tuple = (argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                  pathlib.PureWindowsPath, *_numpy_scalars())
"""Objects a weight file may hold besides tensors and containers: rebuilt from data, never by running code."""

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load(path: Path, what: str) -> Any:
    """What the pickle at ``path`` holds (tensors on the CPU); a file that asks for any other object is a
    ``UserError`` that names the object, the file and the fix. ``what`` starts the message."""
    try:
        with torch.serialization.safe_globals(list(ALLOWED)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - only the unpickler's refusal is reworded; the rest is re-raised
        found = _GLOBAL.search(str(exc))
        if found is None:
            raise
        raise UserError(
            f"{what}: {path} asks for the Python object {found.group(1)} while it is read, and unpickling runs "
            f"such objects' code, so cl-run does not; pass a file that holds only tensors (a state dict or "
            f"safetensors: in a trusted Python, torch.save(torch.load(f, weights_only=False)['model'], 'weights.pt'))"
        ) from None
