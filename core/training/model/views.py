"""Augmented views, made on the device in batch from uint8 images."""

from __future__ import annotations

from typing import Callable, Sequence

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

    def views_without_place_crop(self) -> list[int]:
        """The views (numbered from 1 in recipe order) whose first transform is not an op that crops inside
        each image's place (``takes_places``): given letterboxed images, they would show the padding."""
        return [k for k, pipeline in enumerate(self.pipelines, 1)
                if not (len(pipeline) and getattr(pipeline[0], "takes_places", False))]

    @torch.no_grad()
    def forward(self, images: Tensor, places: Tensor | None = None) -> list[Tensor]:
        """``places``: (B, 4) ``[top, left, height, width]`` of each image on its canvas when the data set
        letterboxes them (``clrun/image_folder`` keep_aspect), for the first op of each view."""
        x = to_float(images)
        views: list[Tensor] = []
        for pipeline, n, stackable in zip(self.pipelines, self.counts, self.stackable):
            if n > 1 and stackable:
                # A view drawn n times is augmented as one stacked batch of n copies: kornia draws every
                # sample's parameters independently, so it is n independent views in one call per op.
                stacked = None if places is None else places.repeat(n, 1)
                views += self.normalize(augmented(pipeline, x.repeat(n, *([1] * (x.ndim - 1))), stacked)).chunk(n)
            else:
                views += [self.normalize(augmented(pipeline, x, places)) for _ in range(n)]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views


def augmented(pipeline: nn.Sequential, x: Tensor, places: Tensor | None) -> Tensor:
    """``pipeline`` applied to ``x``; an op that ``takes_places`` gets them (after it, the image fills the frame)."""
    for op in pipeline:
        if places is not None and getattr(op, "takes_places", False):
            x, places = op(x, places), None
        else:
            x = op(x)
    return x
