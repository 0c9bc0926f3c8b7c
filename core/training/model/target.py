"""The momentum (EMA) target network: a slowly moving copy of backbone + projector.

It never receives gradients; after each optimizer step its weights move towards the online ones.
The schedule's position is a persistent buffer, so a resumed run continues with the exact momentum
it would have used (a plain attribute would restart the schedule: a pitfall other libraries hit).
"""

from __future__ import annotations

import copy
import math
from typing import Collection

import torch
from torch import Tensor, nn

from clrun.recipe.schema import TargetSection
from clrun.training.model.branch import Branch
from clrun.training.model.network import OnlineNetwork, embed, project_tokens
from clrun.training.parallel.sharding import reshard


def momentum_at(settings: TargetSection, step: int, total_steps: int) -> float:
    """The EMA momentum after ``step`` of ``total_steps`` optimizer steps."""
    if settings.schedule == "constant":
        return settings.momentum
    progress = min(step / max(total_steps, 1), 1.0)
    start, end = settings.momentum, settings.final_momentum
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


class TargetNetwork(nn.Module):
    def __init__(self, online: OnlineNetwork, settings: TargetSection, total_steps: int) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(online.backbone)
        self.projector = copy.deepcopy(online.projector)
        self.requires_grad_(False)
        self.settings = settings
        self.total_steps = total_steps
        # The momentum the next update uses, and how many updates were made: checkpointed.
        self.register_buffer("momentum", torch.tensor(momentum_at(settings, 0, total_steps), dtype=torch.float64))
        self.register_buffer("updates", torch.tensor(0, dtype=torch.int64))

    def restart_schedule(self) -> None:
        """Recompute the momentum from the (possibly changed) settings at the updates made so far."""
        self.momentum.fill_(momentum_at(self.settings, int(self.updates), self.total_steps))

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
        return out

    @torch.no_grad()
    def update(self, online: OnlineNetwork) -> None:
        """``target = m * target + (1 - m) * online`` for every parameter, then advance the schedule.

        Buffers (BatchNorm statistics) are not averaged: the target keeps its own, from its own
        forward passes, as the reference code of momentum-target methods does.
        """
        m = float(self.momentum)
        # Sharded (train.strategy: fsdp): update shard by shard, as the online network is stored. A unit whose
        # forward ran without a backward (the target's, under no_grad; an online part the loss left out, such
        # as a projector a token-level loss does not use) still holds its whole weights: free them first.
        reshard(self)
        reshard(online)
        for module, source in ((self.backbone, online.backbone), (self.projector, online.projector)):
            for mine, theirs in zip(module.parameters(), source.parameters()):
                mine.lerp_(theirs.detach(), 1.0 - m)  # mine + (1 - m) * (theirs - mine)
        self.updates += 1
        self.momentum.fill_(momentum_at(self.settings, int(self.updates), self.total_steps))
