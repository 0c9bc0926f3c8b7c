"""The momentum (EMA) target network: a slowly moving copy of backbone + projector.

It never receives gradients; after each optimizer step its weights move towards the online ones.
The schedule's position is a persistent buffer, so a resumed run continues with the exact momentum
it would have used (a plain attribute would restart the schedule: a pitfall other libraries hit). The
step reads the momentum from a Python copy of that position, never from a tensor (no host read per step).
"""

from __future__ import annotations

import copy
import math
from typing import Collection

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clrun.recipe.schema import TargetSection
from clrun.training.model.branch import Branch
from clrun.training.model.network import OnlineNetwork, embed, project_tokens
from clrun.training.parallel import compat
from clrun.training.parallel.sharding import reshard


def momentum_at(settings: TargetSection, step: int, total_steps: int) -> float:
    """The EMA momentum after ``step`` of ``total_steps`` optimizer steps."""
    if settings.schedule == "constant":
        return settings.momentum
    progress = min(step / max(total_steps, 1), 1.0)
    start, end = settings.momentum, settings.final_momentum
    if settings.schedule == "linear":
        return start + (end - start) * progress
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def without_random_drops(network: nn.Module) -> None:
    """Stochastic depth and dropout off in the copy: the target is a fixed function of its weights. The
    reference code of the momentum-teacher methods builds its teacher without them (the student's drop path
    rate is the student's alone); the copy would otherwise keep the online network's, and two forwards of
    one view would differ. Eval mode would do it too, but would also switch a BatchNorm target to running
    statistics, which these methods do not do."""
    for module in network.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        elif isinstance(getattr(module, "drop_prob", None), float):  # timm's DropPath (and its kin)
            module.drop_prob = 0.0


class TargetNetwork(nn.Module):
    def __init__(self, online: OnlineNetwork, settings: TargetSection, total_steps: int) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(online.backbone)
        self.projector = copy.deepcopy(online.projector)
        self.requires_grad_(False)
        without_random_drops(self)
        self.settings = settings
        self.total_steps = total_steps
        # The momentum the next update uses, and how many updates were made: checkpointed.
        self.register_buffer("momentum", torch.tensor(momentum_at(settings, 0, total_steps), dtype=torch.float64))
        self.register_buffer("updates", torch.tensor(0, dtype=torch.int64))
        self._updates: int | None = None  # the buffer's count, in Python: read once (a checkpoint may set it)
        # An earlier frozen copy of the backbone (target.snapshot:): taken now, refreshed by `update`; its
        # weights are checkpointed with the target's.
        self.snapshot: nn.Module | None = None
        if settings.snapshot is not None:
            self.snapshot = copy.deepcopy(self.backbone).eval()

    def start_from(self, states: dict[str, dict[str, Tensor]]) -> None:
        """Start from other weights than the online network's (``init:``, a file's teacher), by part
        (``backbone``, ``projector``); the snapshot, taken from the backbone, is taken again."""
        for part, state in states.items():
            getattr(self, part).load_state_dict(state, strict=False)
        if self.snapshot is not None:
            self.snapshot.load_state_dict(self.backbone.state_dict())

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._updates = None  # a checkpoint's count: read again at the next update

    def restart_schedule(self) -> None:
        """Recompute the momentum from the (possibly changed) settings at the updates made so far."""
        self._updates = int(self.updates)
        self.momentum.fill_(self.momentum_value)

    @property
    def momentum_value(self) -> float:
        """The momentum the next update uses, as a Python number."""
        if self._updates is None:
            self._updates = int(self.updates)  # once per run (and after loading a checkpoint)
        return momentum_at(self.settings, self._updates, self.total_steps)

    @torch.no_grad()
    def forward(self, views: list[Tensor], wants: Collection[str] = frozenset()) -> Branch:
        """The ``clrun.Branch`` of ``views`` (the global ones, whole), without gradient: projections; with
        ``tokens`` or ``token_projections`` in ``wants``, the backbone's tokens of every view (through
        ``forward_tokens``, so the projections are of their pooled token) and the projector's output for
        every patch token when asked."""
        with_tokens = "tokens" in wants or "token_projections" in wants
        _, projections, tokens = embed(self.backbone, self.projector, views, tokens=with_tokens)
        out = Branch(projections=projections)
        if with_tokens:
            out.tokens = tokens
        if "token_projections" in wants:
            out.token_projections = project_tokens(self.projector, tokens)
        if "snapshot_tokens" in wants:
            out.snapshot_tokens = self.snapshot_tokens(views)
        return out

    def snapshot_tokens(self, views: list[Tensor]) -> list:
        """The snapshot's ``clrun.Tokens`` of each view, whole, in eval mode, on the view resized by
        ``snapshot.scale`` (bicubic, as the views' own resizes; not antialiased when enlarging)."""
        scale = self.settings.snapshot.scale
        tokens = []
        for view in views:
            if scale != 1.0:
                size = [round(side * scale) for side in view.shape[-2:]]
                view = F.interpolate(view, size=size, mode="bicubic", align_corners=False, antialias=scale < 1)
            tokens.append(self.snapshot.forward_tokens(view))
        return tokens

    def train(self, mode: bool = True) -> "TargetNetwork":
        super().train(mode)
        if self.snapshot is not None:
            self.snapshot.eval()  # a fixed reference: no dropout, no stochastic depth, whatever the target does
        return self

    def _refresh_snapshot(self) -> None:
        """After update number ``self._updates``: copy the target's backbone into the snapshot at every multiple
        of ``every`` from ``after`` on, ``max_refreshes`` times at most. Which refresh this is follows from the
        count alone, so a resumed run refreshes where the uninterrupted one would have (no state of its own)."""
        settings, done = self.settings.snapshot, self._updates
        if not settings.every or done < settings.after or done % settings.every:
            return
        nth = done // settings.every - (max(settings.after, 1) - 1) // settings.every
        if settings.max_refreshes is not None and nth > settings.max_refreshes:
            return
        for mine, theirs in zip([*self.snapshot.parameters(), *self.snapshot.buffers()],
                                [*self.backbone.parameters(), *self.backbone.buffers()]):
            mine.copy_(theirs)  # rare (once a period): a plain loop, which sharded tensors take too

    @torch.no_grad()
    def update(self, online: OnlineNetwork, healthy: Tensor | None = None) -> None:
        """``target = m * target + (1 - m) * online`` for every parameter, then advance the schedule; nothing
        moves where ``healthy`` (the step's device flag, clrun.training.non_finite) is false.

        Buffers (BatchNorm statistics) are not averaged: the target keeps its own, from its own
        forward passes, as the reference code of momentum-target methods does.
        """
        step = 1.0 - self.momentum_value
        # Sharded (train.strategy: fsdp): update shard by shard, as the online network is stored. A unit whose
        # forward ran without a backward (the target's, under no_grad; an online part the loss left out, such
        # as a projector a token-level loss does not use) still holds its whole weights: free them first.
        reshard(self)
        reshard(online)
        mine = [*self.backbone.parameters(), *self.projector.parameters()]
        theirs = [p.detach() for p in (*online.backbone.parameters(), *online.projector.parameters())]
        # A few fused kernel launches instead of a Python loop of one lerp_ per parameter.
        # In the parameters' dtype: a float32 weight would round 1 - m (0.004 -> 0.0040000002) under float64.
        weight: float | Tensor = step if healthy is None else healthy.to(mine[0].dtype) * step
        compat.foreach_lerp_(mine, theirs, weight)
        # Counted as made even when skipped: a skipped step stops the run before anything is saved.
        self._updates += 1
        self.updates += 1
        self.momentum.fill_(self.momentum_value)
        if self.snapshot is not None:
            self._refresh_snapshot()
