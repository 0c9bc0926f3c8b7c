"""The model alone on ready tensors: the limit cl-run's training step is measured against, and its FLOPs.

A model-only step is what a step must do whatever the pipeline around it: the target network on the
global views, the online network and the loss (forward), backward, clipping when the recipe clips, the
optimizer, and the target's EMA update; on views and masks made once, before (the last training step's,
kept by the probe), so it has no data loading, no augmentation, no mask drawing and no host sync of its own.
It drives the run's own parts (``run.parts``, cl-run's internal record of what it trains), the way
``clrun.training.forward.forward_and_loss`` and ``clrun.training.step.Step`` do: the same modules, the same
optimizer state, bf16 autocast as the runs here use.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from gpu_check import machine
from gpu_check.probe import Watch


class ModelOnly:
    """``step()`` is one model-only step of ``run`` (a finished ``clrun.Run``) on ``watch``'s kept views."""

    def __init__(self, run: Any, watch: Watch) -> None:
        # Internal modules, imported here: a change to them fails this item, recorded, not the whole check.
        from clrun.training.forward import split_loss
        from clrun.training.model.reads import branch_wants

        if watch.views is None:
            raise RuntimeError("the probe kept no views (the run ended before its last step's outputs)")
        self.parts, self.device, self.split_loss = run.parts, run.device, split_loss
        self.views, self.is_global, self.masks = watch.views, watch.is_global, watch.masks
        self.global_views = [v for v, g in zip(self.views, self.is_global) if g]
        self.online_wants = branch_wants(self.parts.reads, "online")
        self.target_wants = branch_wants(self.parts.reads, "target")
        self.drop = self.parts.masking is not None and self.parts.masking.drop
        self.grad_clip = run.recipe.train.grad_clip
        self.step_index = run.step
        after_step = getattr(self.parts.loss_fn, "after_step", None)
        self.after_step = after_step if callable(after_step) else None
        self.clipped = [p for group in self.parts.optimizer.param_groups for p in group["params"]]

    def step(self) -> None:
        parts = self.parts
        parts.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            target = parts.target(self.global_views, self.target_wants) if parts.target is not None else None
            result, _ = parts.trainable(self.views, self.is_global, target, self.step_index, parts.total_steps,
                                        self.masks, self.drop, self.online_wants)
            loss, _ = self.split_loss(result)
        parts.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            parts.scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_(self.clipped, self.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        if self.after_step is not None:
            self.after_step()
        if parts.target is not None:
            parts.target.update(parts.network)

    def timed(self, warmup: int, steps: int) -> dict[str, Any]:
        """Seconds per step over ``steps`` steps after ``warmup`` untimed ones, and the allocator's peak."""
        for _ in range(warmup):
            self.step()
        machine.sync(self.device)
        machine.reset_peak(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        machine.sync(self.device)
        seconds = (time.perf_counter() - start) / steps
        return {"seconds_per_step": seconds, "peak_bytes": machine.peak_bytes(self.device)}

    def flops(self) -> int:
        """FLOPs of one model-only step, forward and backward (matmuls, convolutions, attention: what
        ``torch.utils.flop_counter`` counts; elementwise work and the optimizer are not FLOPs there)."""
        with FlopCounterMode(display=False) as counter:
            self.step()
        return counter.get_total_flops()
