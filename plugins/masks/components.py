"""The ``mask`` components cl-run ships with, offered by import path (listing them does not import torch)."""

from __future__ import annotations

from clrun import Component, hookimpl

MASKS = "clrun.plugins.masks.generators"


@hookimpl
def clrun_components() -> list[Component]:
    return [
        Component("mask", "clrun/random_mask", f"{MASKS}:RandomMask",
                  "MAE: a uniformly random 75% of the patches hidden, the same count per image"),
        Component("mask", "clrun/block_mask", f"{MASKS}:BlockMask",
                  "BEiT/iBOT: rectangles hiding 10-50% of the patches, in half of the images"),
        Component("mask", "clrun/multiblock_mask", f"{MASKS}:MultiBlockMask",
                  "I-JEPA: 4 target blocks (15-20% each) and a context block (85-100%) without them"),
    ]
