"""The online network: backbone -> projector -> optional predictor, with views of equal size stacked."""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Optional

import torch
from torch import Tensor, nn

from clrun.masks import Masks
from clrun.tokens import Tokens
from clrun.training.model.branch import Branch
from clrun.training.model.outputs import StepOutputs


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


def size_groups(views: list[Tensor], masked: Optional[list] = None) -> list[list[int]]:
    """Indices of the views that share an image size (and, given ``masked``, the same masking: whether
    masked, or the visible count that dropping leaves), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault((tuple(v.shape[1:]), masked[i] if masked else False), []).append(i)
    return list(groups.values())


def split_tokens(tokens: Tokens, parts: int) -> list[Tokens]:
    """Tokens of ``parts`` stacked views (equal batches), one ``Tokens`` per view."""
    pieces = zip(tokens.prefix.chunk(parts), tokens.patches.chunk(parts), tokens.pooled.chunk(parts))
    return [Tokens(prefix, patches, tokens.grid, pooled) for prefix, patches, pooled in pieces]


def project_tokens(projector: nn.Module, tokens: list[Optional[Tokens]]) -> list[Optional[Tensor]]:
    """The projector applied to every patch token of the views that have tokens, ``(B, N, K)`` each (None
    for the others); one call over all of them, so a BatchNorm in the head sees them together."""
    present = [t for t in tokens if t is not None]
    if not present:
        return [None] * len(tokens)
    flat = projector(torch.cat([t.patches.flatten(0, 1) for t in present]))
    pieces = iter(flat.split([t.patches.shape[0] * t.patches.shape[1] for t in present]))
    return [None if t is None else next(pieces).view(*t.patches.shape[:2], -1) for t in tokens]


def embed(backbone: nn.Module, projector: nn.Module, views: list[Tensor], masks: Optional[list[Optional[Masks]]] = None,
          drop: bool = False, tokens: bool = False) -> tuple[list[Tensor], list[Tensor], list[Optional[Tokens]]]:
    """(features, projections, tokens) per view. Views of the same size go through in one call: fewer,
    larger kernels, and BatchNorm statistics over all those views together, as contrastive papers do.

    A view with a mask (``masks[i]`` not None) goes through ``backbone.forward_tokens`` with it (hidden
    patches replaced by the mask token, or dropped when ``drop``); with ``tokens``, every view does.
    Those views' ``Tokens`` are returned, None for the others."""
    count = len(views)
    masked = [masks is not None and masks[i] is not None for i in range(count)]
    # Views whose hidden patches are dropped go through together only with the same number kept: the
    # width of their kept patches' index, which the masks know without reading them back.
    grouping = [(m, masks[i].visible_index.shape[1] if m and drop else None) for i, m in enumerate(masked)]
    features: list[Optional[Tensor]] = [None] * count
    projections: list[Optional[Tensor]] = [None] * count
    out_tokens: list[Optional[Tokens]] = [None] * count
    for indices in size_groups(views, grouping):
        x = torch.cat([views[i] for i in indices])
        if masked[indices[0]] or tokens:
            visible = torch.cat([masks[i].visible for i in indices]) if masked[indices[0]] else None
            if visible is not None and drop:
                kept = torch.cat([masks[i].visible_index for i in indices])
                t = backbone.forward_tokens(x, visible, drop, visible_index=kept)
            else:
                t = backbone.forward_tokens(x, visible, drop)
            f = t.pooled
            for i, ti in zip(indices, split_tokens(t, len(indices))):
                out_tokens[i] = ti
        else:
            f = backbone(x)
        z = projector(f)
        for i, fi, zi in zip(indices, f.chunk(len(indices)), z.chunk(len(indices))):
            features[i], projections[i] = fi, zi
    return features, projections, out_tokens  # type: ignore[return-value]


class OnlineNetwork(nn.Module):
    """The trained branch. ``forward(views, masks, drop, wants) -> clrun.Branch``, per view: features and
    projections; predictions with a predictor; with masks, the masked views' tokens (None for the others)
    and the token head's predictions; the projector over every patch token when ``wants`` names
    ``token_projections`` (the outputs that cost extra passes are made only for a reader that reads them)."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: Optional[nn.Module] = None,
                 token_head: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor
        self.token_head = token_head

    def forward(self, views: list[Tensor], masks: Optional[list[Optional[Masks]]] = None, drop: bool = False,
                wants: Collection[str] = frozenset()) -> Branch:
        features, projections, tokens = embed(self.backbone, self.projector, views, masks, drop)
        out = Branch(features=features, projections=projections)
        if self.predictor is not None:
            # One predictor call over all views: like the projector, its BatchNorm sees them together.
            sizes = [len(z) for z in projections]
            out.predictions = self.predictor(torch.cat(projections)).split(sizes)
        if masks is not None:
            out.tokens = tokens
            if "token_projections" in wants:
                out.token_projections = project_tokens(self.projector, tokens)
            if self.token_head is not None:
                out.token_predictions = [None if t is None else self.token_head(t, m) for t, m in zip(tokens, masks)]
        return out


# What one optimizer step differentiates: the online network and the loss, as one module. The loss
# belongs in it because a loss may have parameters (learned prototypes): wrapped in
# DistributedDataParallel, this module's gradients, the loss's included, are averaged over ranks.
# The momentum target network stays outside: it gets no gradients, and every rank updates its copy
# identically from the (identical) online weights.
class Trainable(nn.Module):
    def __init__(self, network: nn.Module, loss_fn: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.loss_fn = loss_fn

    def forward(self, views: list[Tensor], is_global: list[bool], target: Optional[Branch], step: int,
                total_steps: int, masks: Optional[list[Optional[Masks]]] = None, drop: bool = False,
                wants: Collection[str] = frozenset()) -> tuple[Any, StepOutputs]:
        """``target``: the target network's branch on the global views (None without one); ``wants``: the
        online branch's optional outputs some reader reads."""
        online = self.network(views, masks, drop, wants)
        out = StepOutputs(views, is_global, masks, online, target if target is not None else Branch(), step, total_steps)
        # The outputs go back detached: DDP looks for unused parameters from whatever forward returns, and
        # a token-level loss may leave the projections out of its graph (callbacks need no gradients).
        return self.loss_fn(out), detached(out)


def detached(value: Any) -> Any:
    """``value`` (StepOutputs, a Branch, Tokens, a list, a tensor) with every tensor in it detached from the graph."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, list):
        return [detached(v) for v in value]
    if isinstance(value, Branch):
        return value.map(detached)
    if dataclasses.is_dataclass(value) and not isinstance(value, Masks):
        return dataclasses.replace(value, **{f.name: detached(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return value
