"""One optimizer step: views on the device, online (and target) network, loss, backward, update; the batch
at once, in micro-batches (``train.accumulate_steps``) or in gradient-cached chunks (``train.grad_cache_chunks``)."""

from __future__ import annotations

import torch
from torch import Tensor

from clrun import distributed
from clrun.training.forward import forward_and_loss, split_loss  # noqa: F401  (this module's API before forward.py)
from clrun.training.model.outputs import StepOutputs
from clrun.training.non_finite import NonFiniteGuard, NonFiniteLossError, scaler_overflow, step_skipping
from clrun.training.optim.clipping import ClipMode, clip_gradients
from clrun.training.optim.param_groups import freeze_gradients
from clrun.training.run import Run
from clrun.training.parallel.sharding import reshard
from clrun.training.split.accumulation import accumulated_backward
from clrun.training.split.grad_cache import cached_backward
from clrun.training.step_metrics import StepRecord

__all__ = ["Step", "NonFiniteLossError", "PRECISIONS", "step_values"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def step_values(loss: Tensor, extras: dict[str, Tensor]) -> tuple[list[str], Tensor]:
    """The loss and the loss's metrics as one 1-d fp32 tensor on the loss's device, averaged over ranks in
    one collective (queued, not read: every rank checks for NaN, and later logs, the same numbers)."""
    names = ["loss", *extras]
    # A loss's metric computed on the host (a Python number) is uploaded without a wait.
    values = torch.stack([loss.detach().float().reshape(()),
                          *(v.float().reshape(()).to(loss.device, non_blocking=True) for v in extras.values())])
    return names, distributed.mean_over_ranks(values)


class Step:
    """One optimizer step of ``run``: ``step(images, places)`` trains ``run.parts`` on a batch (``places``: the
    images' places on their canvas when the data set letterboxes them), as step ``run.step`` (the steps
    completed before it; the loop counts them). Built once per run; it owns how a step computes: on
    ``device``, in ``precision`` (``PRECISIONS``), with ``scaler`` (fp16's loss scaling) and ``grad_clip``."""

    def __init__(self, run: Run, precision: str, scaler: torch.amp.GradScaler, grad_clip: float | None,
                 accumulate_steps: int = 1, grad_cache_chunks: int = 1, grad_clip_mode: ClipMode = "global_norm") -> None:
        self.run, self.parts, self.device = run, run.parts, run.device
        self.dtype = PRECISIONS[precision]
        self.scaler, self.grad_clip, self.grad_clip_mode = scaler, grad_clip, grad_clip_mode
        # How the batch goes through: at once or in micro-batches (accumulated), or in cached chunks.
        self.parts_of_batch = grad_cache_chunks if grad_cache_chunks > 1 else accumulate_steps
        self.backward = cached_backward if grad_cache_chunks > 1 else accumulated_backward
        # A loss's own update of its parameters after the optimizer's (unit-norm prototypes, say), if it has one.
        after_step = getattr(self.parts.loss_fn, "after_step", None)
        self.loss_after_step = after_step if callable(after_step) else None
        # What clipping measures: every parameter the optimizer holds (its groups are fixed for the run).
        self.clipped = [p for group in self.parts.optimizer.param_groups for p in group["params"]]
        parts = self.parts
        self.guard = NonFiniteGuard((parts.network, parts.target, parts.loss_fn), self.device)

    @classmethod
    def of(cls, run: Run) -> Step:
        """The step ``run``'s recipe asks for (``train.precision``, ``train.grad_clip`` and ``grad_clip_mode``,
        ``train.accumulate_steps``, ``train.grad_cache_chunks``), with the parts' scaler."""
        train = run.recipe.train
        return cls(run, train.precision, run.parts.scaler, train.grad_clip, train.accumulate_steps,
                   train.grad_cache_chunks, train.grad_clip_mode)

    def autocast(self) -> torch.autocast:
        """The step's precision (``train.precision``) for a forward pass."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def gradients(self, images: Tensor, places: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], StepOutputs]:
        """The batch's gradients (scaled by the loss scaler), added to the parameters' ``.grad``; returns the
        loss, the loss's metrics (this process's, detached) and the step's outputs."""
        return self.backward(self.parts, images, places, self.parts_of_batch, self.run.step, self.device,
                             self.autocast, self.scaler)

    def __call__(self, images: Tensor, places: Tensor | None = None) -> tuple[StepRecord, StepOutputs]:
        """The step's metrics (on the device until the loop reads them: ``clrun.training.step_metrics``) and
        outputs (for callbacks such as an online probe; the graph is already freed).

        A non-finite loss is caught on the device (``clrun.training.non_finite``): this step and every later one
        leave the weights, the optimizer's state, the buffers and the target as they were, and the loop stops
        the run when it reads the metrics."""
        parts, scaler, step, guard = self.parts, self.scaler, self.run.step, self.guard
        scheduled = parts.schedules.apply(step)
        parts.optimizer.zero_grad(set_to_none=True)
        guard.before_step()
        loss, extras, out = self.gradients(images, places)
        names, values = step_values(loss, extras)
        healthy = guard.check(values[0])
        found_inf = guard.skip()
        if scaler.is_enabled():
            scaler.unscale_(parts.optimizer)  # fp16: the true gradients, and whether they overflowed
            found_inf = torch.maximum(found_inf, scaler_overflow(scaler, parts.optimizer))
        if self.grad_clip is not None:
            clip_gradients(self.clipped, self.grad_clip, self.grad_clip_mode)
        freeze_gradients(parts.optimizer, step)  # after clipping: a frozen group's norm still counts, as in the papers
        lr = parts.optimizer.param_groups[0]["lr"]  # the rate this step used
        step_skipping(parts.optimizer, found_inf)
        scaler.update()  # fp16: the loss scale follows the overflow found above
        if parts.scheduler is not None:
            parts.scheduler.step()
        if parts.whole_template is not None:  # sharded (train.strategy: fsdp)
            # A part whose forward ran without a backward (a projector a token-level loss leaves out) is still
            # gathered whole on every process; the step is over, so its shards are all it needs to keep.
            reshard(parts.network)
            reshard(parts.loss_fn)
        if self.loss_after_step is not None:
            self.loss_after_step()
        host = {"lr": lr, **scheduled}
        if parts.target is not None:
            host["target_momentum"] = parts.target.momentum_value  # the momentum this update uses
            parts.target.update(parts.network, healthy)
        guard.after_step()
        return StepRecord(step + 1, self.run.epoch, host, names, values), out
