"""Input checks shared by the losses that compare the global views' projections with each other."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clrun import ComponentError


def global_projections(owner: str, out: Any, why_two_images: str) -> list[Tensor]:
    """The global views' projections: at least 2 views, all ``(batch, dim)`` of one shape, batch >= 2.

    ``why_two_images`` completes "needs at least 2 images per batch to ..." in the error message.
    """
    views = [z for z, g in zip(out.projections, out.is_global) if g]
    if len(views) < 2:
        raise ComponentError(
            f"{owner} compares at least 2 global views; the recipe makes {len(views)}. "
            "Use a global view section with count 2 (a section without `local: true`)."
        )
    shape = tuple(views[0].shape)
    if len(shape) != 2 or any(tuple(z.shape) != shape for z in views):
        raise ComponentError(
            f"{owner} needs the global views' projections as (batch, dim) tensors of the same "
            "shape; got " + ", ".join(str(tuple(z.shape)) for z in views)
        )
    if shape[0] < 2:
        raise ComponentError(
            f"{owner} needs at least 2 images per batch to {why_two_images}; got batch size {shape[0]}. "
            "Raise the batch size, or drop the last incomplete batch if it is the one with a single image."
        )
    return views


def compute_dtype(tensors: list[Tensor]) -> torch.dtype:
    """At least float32: fp16/bf16 inputs are computed in fp32, fp64 stays fp64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype
