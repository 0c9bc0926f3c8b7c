"""The online network: backbone -> projector -> optional predictor, with views of equal size stacked."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def output_dim(module: nn.Module, example: Tensor, what: str) -> int:
    """A module's output width, measured on a tiny batch in eval mode so any module works (timm's
    ``num_features`` and ``head_hidden_size`` disagree for some models; third-party ones may have neither)."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(example[:2])
    module.train(was_training)
    if out.ndim != 2:
        raise ValueError(f"the {what} must return (batch, features) tensors; it returned shape {tuple(out.shape)}")
    return int(out.shape[1])


def size_groups(views: list[Tensor]) -> list[list[int]]:
    """Indices of the views that share an image size, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(tuple(v.shape[1:]), []).append(i)
    return list(groups.values())


def embed(backbone: nn.Module, projector: nn.Module, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(features, projections) per view. Views of the same size go through in one call: fewer, larger
    kernels, and BatchNorm statistics over all those views together, as contrastive papers do."""
    features: list[Optional[Tensor]] = [None] * len(views)
    projections: list[Optional[Tensor]] = [None] * len(views)
    for indices in size_groups(views):
        f = backbone(torch.cat([views[i] for i in indices]))
        z = projector(f)
        for i, fi, zi in zip(indices, f.chunk(len(indices)), z.chunk(len(indices))):
            features[i], projections[i] = fi, zi
    return features, projections  # type: ignore[return-value]


class OnlineNetwork(nn.Module):
    """The trained branch. ``forward(views) -> (features, projections, predictions or None)``, per view."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor

    def forward(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor], Optional[list[Tensor]]]:
        features, projections = embed(self.backbone, self.projector, views)
        predictions = None
        if self.predictor is not None:
            # One predictor call over all views: like the projector, its BatchNorm sees them together.
            sizes = [len(z) for z in projections]
            predictions = list(self.predictor(torch.cat(projections)).split(sizes))
        return features, projections, predictions
