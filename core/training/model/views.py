"""Augmented views, made on the device in batch from uint8 images.

Nothing here waits on the device: the augmentations draw their random parameters on the host (see
``Views._apply``), a few numbers per image that each op uploads without blocking; the copies of a view
drawn several times are cut by its first op from the one float batch when it can (``crop_copies``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from clrun.recipe.schema import DataSection, ViewSection
from clrun.recipe.spec import ComponentSpec


class Normalize(nn.Module):
    """(x - mean) / std per channel; identity when the recipe sets no mean/std."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        self.enabled = mean is not None
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean or [0.0]).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0]).view(shape), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std if self.enabled else x


def to_float(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) in [0, 255] to float in [0, 1], the range kornia ops expect."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def draws_per_batch(op: nn.Module) -> bool:
    """Whether ``op`` draws one random decision for the whole batch (kornia's ``same_on_batch``, or a
    ``p_batch`` below 1): the stacked copies of an image would then share it, so such a view is drawn
    copy by copy."""
    return bool(getattr(op, "same_on_batch", False)) or getattr(op, "p_batch", 1.0) < 1.0


# Where the augmentations draw: the host, spelled out as "cpu" (on a CPU run ``clrun.host_syncs`` takes a
# tensor made with ``device="cpu"`` for host data, one made with the training device for the device's).
HOST = "cpu"


class Views(nn.Module):
    """Each view's augmentation pipeline, applied ``count`` times with independent randomness.

    ``forward(uint8 batch) -> list of float batches``, one per drawn view in recipe order.
    """

    def __init__(self, views: list[ViewSection], data: DataSection,
                 build: Callable[[ComponentSpec], nn.Module] = ComponentSpec.build) -> None:
        """``build``: how each transform's entry becomes a module (the builder collects errors with it)."""
        super().__init__()
        self.pipelines = nn.ModuleList()
        self.counts: list[int] = []
        self.stackable: list[bool] = []
        self.is_global: list[bool] = []
        for view in views:
            self.pipelines.append(nn.Sequential(*(build(t) for t in view.transforms)))
            self.stackable.append(not any(map(draws_per_batch, self.pipelines[-1].modules())))
            self.counts.append(view.count)
            self.is_global += [not view.local] * view.count
        self.normalize = Normalize(data.mean, data.std)
        self.channels_last = False  # set by the builder when the network uses NHWC

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> Views:
        """Moves the module (``to``, ``cuda``, ``half``..., or a parent's move, which reaches this module
        through ``_apply``) but keeps every augmentation's random draws where they were made: on the host.

        kornia moves an op's random number generation to the device the op is moved to; its Python guards
        on the drawn values (ColorJitter's ``(factors != neutral).any()``, the crop's box coordinates) then
        become device reads, a host sync each. Drawn on the host, the parameters are a few numbers per
        image that the ops move to the images' device without blocking. Setting every op back after each
        move (rather than trusting one of its methods to be the one called) holds for any way the module
        moves, and the draws stay those of the host's seeded generator on every device, in the dtype each
        op drew in before. Ops are recognised by kornia's public ``set_rng_device_and_dtype``. (kornia's
        own move of its samplers, undone here, reads their ranges on the device: once, at set-up.)
        """
        dtypes = {m: m.dtype for m in self.modules() if _draws_randomly(m)}
        out = super()._apply(fn, *args, **kwargs)
        for op, dtype in dtypes.items():
            op.set_rng_device_and_dtype(HOST, dtype)
        return out

    def views_without_place_crop(self) -> list[int]:
        """The views (numbered from 1 in recipe order) whose first transform is not an op that crops inside
        each image's place (``takes_places``): given letterboxed images, they would show the padding."""
        return [k for k, pipeline in enumerate(self.pipelines, 1)
                if not (len(pipeline) and getattr(pipeline[0], "takes_places", False))]

    @torch.no_grad()
    def forward(self, images: Tensor, places: Tensor | None = None) -> list[Tensor]:
        """``places``: (B, 4) ``[top, left, height, width]`` of each image on its canvas when the data set
        letterboxes them (``clrun/image_folder`` keep_aspect), for the first op of each view."""
        x = to_float(images)  # once: every view is cut from this one float batch
        views: list[Tensor] = []
        for pipeline, n, stackable in zip(self.pipelines, self.counts, self.stackable):
            if n > 1 and stackable:
                # A view drawn n times is augmented as one stacked batch of n copies: kornia draws every
                # sample's parameters independently, so it is n independent views in one call per op.
                views += self.normalize(augmented(pipeline, x, places, copies=n)).chunk(n)
            else:
                views += [self.normalize(augmented(pipeline, x, places)) for _ in range(n)]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views


def augmented(pipeline: nn.Sequential, x: Tensor, places: Tensor | None, copies: int = 1) -> Tensor:
    """``pipeline`` applied to ``copies`` stacked copies of ``x`` (copy k of image i at row k B + i); an op
    that ``takes_places`` gets them (after it, the image fills the frame).

    A first op with ``crop_copies(x, copies, places)`` (a crop: it returns what it would on the stacked
    copies) makes the copies itself, cut from ``x``: no full-size copy of the batch per copy.
    """
    ops = list(pipeline)
    if copies > 1:
        first = ops[0] if ops else None
        if hasattr(first, "crop_copies"):
            takes = places is not None and getattr(first, "takes_places", False)
            x = first.crop_copies(x, copies, places if takes else None)
            ops = ops[1:]
            places = None if takes or places is None else places.repeat(copies, 1)
        else:
            x = x.repeat(copies, *([1] * (x.ndim - 1)))
            places = None if places is None else places.repeat(copies, 1)
    for op in ops:
        if places is not None and getattr(op, "takes_places", False):
            x, places = op(x, places), None
        else:
            x = op(x)
    return x


def _draws_randomly(module: nn.Module) -> bool:
    """An augmentation (or its parameter generator) whose random draws follow it when it moves: kornia's."""
    return callable(getattr(module, "set_rng_device_and_dtype", None)) and hasattr(module, "device") \
        and hasattr(module, "dtype")
