"""``kornia/RandomResizedCrop``: kornia's op, with its crop made by ``resized_crops``.

Recipes name kornia's class, so the registry builds this subclass under its name: the same arguments, the
same draws (kornia's own parameter generator, on the host), the same pixels in slice mode (kornia's
default). What changes is how the boxes are cut: one batched kernel on a GPU instead of a Python loop of
one resize per image, and ``crop_copies``, by which ``Views`` gets the copies of a view drawn several times
cut from one batch instead of from copies of it. The resample mode (``cropping_mode="resample"``) is
kornia's own, untouched.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import kornia.augmentation as K
import torch
from torch import Tensor

from clrun.plugins.augmentations.resized_crops import resized_crops


class RandomResizedCrop(K.RandomResizedCrop):
    """kornia's ``RandomResizedCrop`` (its arguments and conventions are documented there), cut by
    ``resized_crops``."""

    def apply_transform(self, input: Tensor, params: Dict[str, Tensor], flags: Dict[str, Any],
                        transform: Optional[Tensor] = None) -> Tensor:
        if flags["cropping_mode"] != "slice" or torch.compiler.is_compiling():
            # A warp, or kornia's gather for compiled graphs (the sliced path reads the boxes in Python).
            return super().apply_transform(input, params, flags, transform)
        return resized_crops(input, params["src"], flags["size"], flags["resample"].name, flags["align_corners"])

    def crop_copies(self, images: Tensor, copies: int, places: Tensor | None = None) -> Tensor:
        """What ``self(images.repeat(copies, 1, 1, 1))`` gives (the same draws, the same pixels): copy k of
        image i at row k B + i, each with its own box, without the full-size copies."""
        if places is not None:
            raise ValueError(f"kornia/RandomResizedCrop crops whole images and takes no places; got places for "
                             f"{len(places)} images: use clrun/random_resized_crop to crop inside them")
        stacked = (copies * images.shape[0], *images.shape[1:])
        if self.flags["cropping_mode"] != "slice" or self.p_batch != 1.0 or images.ndim != 4:
            # Kornia's own handling (a warp, or one draw for the whole stack whether to crop at all).
            return self(images.repeat(copies, *([1] * (images.ndim - 1))))
        params = self.forward_parameters(stacked)
        source = torch.arange(images.shape[0]).repeat(copies)
        flags = self.flags
        return resized_crops(images, params["src"], flags["size"], flags["resample"].name, flags["align_corners"],
                             source=source)
