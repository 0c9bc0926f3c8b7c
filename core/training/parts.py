"""The parts a run trains: a built model (``clrun.training.model.build``), placed for its run
(``clrun.training.parallel.parallelize``), with what updates it (``clrun.training.optim.optimization``), as one record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from clrun.training.model.masking import Masking
from clrun.training.model.network import OnlineNetwork
from clrun.training.optim.optimization import Optimization
from clrun.training.parallel.parallelize import Placed
from clrun.training.optim.schedules import ScheduledScalars
from clrun.training.model.target import TargetNetwork
from clrun.training.model.views import Views

if TYPE_CHECKING:
    from clrun.weights.plan import InitPlan


@dataclass(frozen=True)
class Parts:
    """Assembled once (``assemble``) and never changed: what the step, the checkpoints and the callbacks read."""

    views: Views
    network: OnlineNetwork
    target: Optional[TargetNetwork]
    loss_fn: nn.Module
    # What a step differentiates: network and loss_fn as one module, in DDP when several processes train.
    trainable: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    schedules: ScheduledScalars  # the recipe's scheduled settings, set before each step
    scaler: torch.amp.GradScaler  # fp16's loss scaler (disabled for other precisions)
    masking: Optional[Masking]  # the recipe's masking: section, built
    reads: frozenset[str]  # what the loss reads of each step: the optional outputs computed
    eval_size: tuple[int, int]
    total_steps: int
    feature_dim: int  # the backbone's output width
    projection_dim: int  # the projector's output width
    # A sharded run's plain copy of the network (on the CPU): what its whole weights are gathered into.
    whole_template: Optional[OnlineNetwork] = None
    init: Optional[InitPlan] = None  # what the recipe's init: section loaded (clrun.weights.plan)
    # The optimizer groups' parameters as format-1 checkpoints saved them, where they differ (Optimization).
    format1_groups: Optional[list[list[nn.Parameter]]] = None


def assemble(placed: Placed, optimization: Optimization) -> Parts:
    """The parts of ``placed``'s model updated by ``optimization``."""
    model = placed.model
    return Parts(views=model.views, network=model.network, target=placed.target, loss_fn=model.loss_fn,
                 trainable=placed.trainable, optimizer=optimization.optimizer, scheduler=optimization.scheduler,
                 schedules=optimization.schedules, scaler=optimization.scaler, masking=model.masking,
                 reads=model.reads, eval_size=model.eval_size, total_steps=model.total_steps,
                 feature_dim=model.feature_dim, projection_dim=model.projection_dim,
                 whole_template=placed.whole_template, init=model.init,
                 format1_groups=optimization.format1_groups)
