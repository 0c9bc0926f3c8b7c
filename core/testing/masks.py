"""The contracts of a ``mask`` component: what the masked forward passes and token losses rely on.

A generator is called as ``generator(batch, (grid_height, grid_width), device)`` and returns
``clrun.Masks`` (see ``clrun.masks``). Each contract draws on the grids below.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from clrun import Masks, create
from clrun.testing.contract import require

GRIDS = ((14, 14), (4, 4), (6, 9))  # a 224 px image in 16 px patches, a tiny grid, a non-square one
BATCH = 16


def _draw(name: str, grid: tuple[int, int], **settings: Any) -> Masks:
    return create("mask", name, **settings)(BATCH, grid, torch.device("cpu"))


def shapes_and_dtypes(kind: str, name: str, **settings: Any) -> None:
    """``visible`` is ``(B, L)`` and ``targets`` ``(B, M, L)`` with ``M >= 1``, both bool, on the device asked for."""
    for grid in GRIDS:
        masks = _draw(name, grid, **settings)
        patches = grid[0] * grid[1]
        require(isinstance(masks, Masks), f"{name} must return clrun.Masks, returned {type(masks).__name__}")
        require(masks.visible.dtype == torch.bool and masks.targets.dtype == torch.bool,
                f"{name}: visible and targets must be bool tensors; got {masks.visible.dtype}, {masks.targets.dtype}")
        require(tuple(masks.visible.shape) == (BATCH, patches),
                f"{name} on a {grid} grid: visible must be ({BATCH}, {patches}), got {tuple(masks.visible.shape)}")
        require(masks.targets.ndim == 3 and masks.targets.shape[0] == BATCH and masks.targets.shape[2] == patches
                and masks.targets.shape[1] >= 1,
                f"{name} on a {grid} grid: targets must be ({BATCH}, M, {patches}), got {tuple(masks.targets.shape)}")


def targets_are_hidden(kind: str, name: str, **settings: Any) -> None:
    """No patch to predict is visible to the online network (else the task is a copy), and every image
    shows the network at least one patch. A generator that copies a reference sampler which, when nothing else
    fits, lets the context show some target patches says so (a bool class attribute ``targets_always_hidden``
    set to False): then only the second holds, and it must still hide targets on a grid the size of the
    reference's (the first grid)."""
    generator = create("mask", name, **settings)
    always = bool(getattr(generator, "targets_always_hidden", True))
    for grid in GRIDS if always else GRIDS[:1]:
        masks = _draw(name, grid, **settings)
        require(not bool((masks.targets & masks.visible.unsqueeze(1)).any()),
                f"{name} on a {grid} grid: some target patches are also visible")
    for grid in GRIDS:
        masks = _draw(name, grid, **settings)
        require(bool(masks.visible.any(dim=1).all()), f"{name} on a {grid} grid: an image has no visible patch")


def equal_counts(kind: str, name: str, **settings: Any) -> None:
    """A generator that declares ``equal_counts`` keeps one visible count and one size per target set
    across the batch: the kept tokens are dropped into one stacked tensor."""
    generator = create("mask", name, **settings)
    require(isinstance(getattr(generator, "equal_counts", None), bool),
            f"{name} must say whether its counts are equal across the batch (a bool class attribute equal_counts)")
    if not generator.equal_counts:
        return
    for grid in GRIDS:
        masks = generator(BATCH, grid, torch.device("cpu"))
        visible, targets = masks.visible.sum(dim=1), masks.targets.sum(dim=2)
        require(bool((visible == visible[0]).all()), f"{name} on a {grid} grid: visible counts differ: {visible.tolist()}")
        require(bool((targets == targets[:1]).all()),
                f"{name} on a {grid} grid: target set sizes differ across the batch: {targets.tolist()}")


def random_per_image_and_seeded(kind: str, name: str, **settings: Any) -> None:
    """Images of one batch get different masks, and the same torch seed draws the same batch (a resumed
    run draws what an uninterrupted one would)."""
    generator = create("mask", name, **settings)
    torch.manual_seed(1)
    first = generator(BATCH, (14, 14), torch.device("cpu"))
    torch.manual_seed(1)
    again = generator(BATCH, (14, 14), torch.device("cpu"))
    require(torch.equal(first.visible, again.visible) and torch.equal(first.targets, again.targets),
            f"{name}: the same seed drew different masks; draw from torch's default generator")
    layouts = {tuple(row.tolist()) for row in first.targets.flatten(1)}
    require(len(layouts) > 1, f"{name}: every image of the batch got the same masks; draw per image")


CONTRACTS: dict[str, Callable[..., None]] = {
    "shapes_and_dtypes": shapes_and_dtypes,
    "targets_are_hidden": targets_are_hidden,
    "equal_counts": equal_counts,
    "random_per_image_and_seeded": random_per_image_and_seeded,
}
