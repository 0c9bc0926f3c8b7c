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

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        x = to_float(images)
        views: list[Tensor] = []
        for pipeline, n, stackable in zip(self.pipelines, self.counts, self.stackable):
            if n > 1 and stackable:
                # A view drawn n times is augmented as one stacked batch of n copies: kornia draws every
                # sample's parameters independently, so it is n independent views in one call per op.
                views += self.normalize(pipeline(x.repeat(n, *([1] * (x.ndim - 1))))).chunk(n)
            else:
                views += [self.normalize(pipeline(x)) for _ in range(n)]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views
