"""Learning-rate schedules, stepped once per optimizer step (timm's schedulers do the arithmetic).

``clrun.plugins.optim.components`` offers them as ``clrun/warmup_cosine`` and ``clrun/constant``.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from timm.scheduler import CosineLRScheduler

from clrun import Range, checked

# A negative warm-up or rate would give negative learning rates: refused where the recipe sets them.
EPOCHS = Range(min=0, hint="0: no warm-up")
RATE = Range(min=0)


class PerStepSchedule:
    """Adapts a timm scheduler (``step_update(num_updates)``) to the loop's ``step()`` per optimizer step;
    ``offset`` steps ahead (step k gets the scheduler's value at k + offset).

    The step count is the whole state: restoring it from a checkpoint restores the exact learning rate.
    """

    def __init__(self, scheduler: Any, offset: int = 0) -> None:
        self.scheduler, self.offset = scheduler, offset
        self.steps = 0
        self.scheduler.step_update(self.offset)

    def step(self) -> None:
        self.steps += 1
        self.scheduler.step_update(self.steps + self.offset)

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.scheduler.step_update(self.steps + self.offset)


class WarmupToPeakCosine(CosineLRScheduler):
    """timm's cosine with a warm-up whose last step is at the peak: step t of W has
    ``warmup_lr + t (lr - warmup_lr) / (W - 1)``, ``np.linspace(warmup_lr, lr, W)`` as the ``cosine_scheduler``
    of DINO's, iBOT's and DINOv2's code has it (timm's own divides by W, reaching the peak a step later)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.warmup_t > 1:
            self.warmup_steps = [(v - self.warmup_lr_init) / (self.warmup_t - 1) for v in self.base_values]


@checked
def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: Annotated[float, EPOCHS] = 10.0,
    warmup_lr: Annotated[float, RATE] = 0.0,
    min_lr: Annotated[float, RATE] = 0.0,
    warmup_ends_at_peak: bool = False,
    offset_steps: Annotated[int, Range(min=0, hint="I-JEPA's schedulers: 1")] = 0,
) -> PerStepSchedule:
    """Linear warmup from ``warmup_lr`` for ``warmup_epochs``, then cosine decay to ``min_lr`` (SimCLR).

    Warmup is clipped to half the run so short runs still decay. Step t of a W-step warm-up has
    ``warmup_lr + t (lr - warmup_lr) / W`` (timm's and MAE's); with ``warmup_ends_at_peak`` it has
    ``... / (W - 1)``, so its last step is at the peak (DINO's, iBOT's and DINOv2's ``cosine_scheduler``).
    The cosine then spans the remaining steps and never quite reaches ``min_lr``, as in both.
    ``offset_steps``: step k gets the schedule's value at k + offset_steps. I-JEPA's ``WarmupCosineSchedule``
    is stepped before each update and counts first, so its step k has the value at k + 1 (its first lr is
    ``warmup_lr + (lr - warmup_lr) / W``, not ``warmup_lr``): ``offset_steps: 1``.
    """
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps // 2)
    schedule = WarmupToPeakCosine if warmup_ends_at_peak else CosineLRScheduler
    scheduler = schedule(
        optimizer,
        t_initial=max(total_steps - warmup_steps, 1),
        lr_min=min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=warmup_lr,
        warmup_prefix=True,  # the cosine starts after warmup, so it spans the remaining steps
        t_in_epochs=False,
    )
    return PerStepSchedule(scheduler, offset_steps)


@checked
def constant(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
             warmup_epochs: Annotated[float, EPOCHS] = 0.0) -> LambdaLR:
    """The optimizer's learning rate throughout, after an optional linear warmup from 0."""
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)
