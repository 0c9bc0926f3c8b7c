"""The online network: backbone -> projector, with views of equal size stacked into one call."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clrun.training.outputs import StepOutputs


def feature_dim(backbone: nn.Module, example: Tensor) -> int:
    """The backbone's output width, measured on a tiny batch so any backbone works (timm's
    ``num_features`` and ``head_hidden_size`` disagree for some models; third-party ones may have neither)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(example[:2])
    backbone.train(was_training)
    if out.ndim != 2:
        raise ValueError(
            f"the backbone must return pooled (batch, features) tensors; it returned shape {tuple(out.shape)}"
        )
    return int(out.shape[1])


class OnlineNetwork(nn.Module):
    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, views: list[Tensor], is_global: list[bool]) -> StepOutputs:
        # Stack views of the same size into one backbone call: fewer, larger kernels, and BatchNorm
        # statistics over all views together, as contrastive papers do.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(tuple(v.shape[1:]), []).append(i)
        features: list[Tensor | None] = [None] * len(views)
        projections: list[Tensor | None] = [None] * len(views)
        for indices in groups.values():
            f = self.backbone(torch.cat([views[i] for i in indices]))
            z = self.projector(f)
            for i, fi, zi in zip(indices, f.chunk(len(indices)), z.chunk(len(indices))):
                features[i], projections[i] = fi, zi
        return StepOutputs(features=features, projections=projections, is_global=list(is_global))
