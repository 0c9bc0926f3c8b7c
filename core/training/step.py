"""One optimizer step: views on the device, online (and target) network, loss, backward, update; the batch
at once, in micro-batches (``train.accumulate_steps``) or in gradient-cached chunks (``train.grad_cache_chunks``)."""

from __future__ import annotations

import torch
from torch import Tensor

from clrun import distributed
from clrun.training.forward import forward_and_loss, split_loss  # noqa: F401  (this module's API before forward.py)
from clrun.training.model.outputs import StepOutputs
from clrun.training.optim.param_groups import freeze_gradients
from clrun.training.run import Run
from clrun.training.parallel.sharding import reshard
from clrun.training.split.accumulation import accumulated_backward
from clrun.training.split.grad_cache import cached_backward

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite; no optimizer step was taken, so the weights are still the last good ones.

    A stateful loss may already have queued this batch's keys: the run stops, and resuming from the
    checkpoint restores that state with the weights."""


def reduced_metrics(loss: Tensor, extras: dict[str, Tensor]) -> dict[str, float]:
    """The loss and the loss's metrics as floats, averaged over ranks in one collective: every rank
    logs, and checks for NaN, the same numbers (a NaN on any rank makes the mean NaN everywhere)."""
    names = ["loss", *extras]
    values = torch.stack([loss.detach().float().reshape(()), *(v.float().reshape(()).to(loss.device) for v in extras.values())])
    return dict(zip(names, distributed.mean_over_ranks(values).tolist()))


class Step:
    """One optimizer step of ``run``: ``step(images, places)`` trains ``run.parts`` on a batch (``places``: the
    images' places on their canvas when the data set letterboxes them), as step ``run.step`` (the steps
    completed before it; the loop counts them). Built once per run; it owns how a step computes: on
    ``device``, in ``precision`` (``PRECISIONS``), with ``scaler`` (fp16's loss scaling) and ``grad_clip``."""

    def __init__(self, run: Run, precision: str, scaler: torch.amp.GradScaler, grad_clip: float | None,
                 accumulate_steps: int = 1, grad_cache_chunks: int = 1) -> None:
        self.run, self.parts, self.device = run, run.parts, run.device
        self.dtype = PRECISIONS[precision]
        self.scaler, self.grad_clip = scaler, grad_clip
        # How the batch goes through: at once or in micro-batches (accumulated), or in cached chunks.
        self.parts_of_batch = grad_cache_chunks if grad_cache_chunks > 1 else accumulate_steps
        self.backward = cached_backward if grad_cache_chunks > 1 else accumulated_backward
        # A loss's own update of its parameters after the optimizer's (unit-norm prototypes, say), if it has one.
        after_step = getattr(self.parts.loss_fn, "after_step", None)
        self.loss_after_step = after_step if callable(after_step) else None
        # What clipping measures: every parameter the optimizer holds (its groups are fixed for the run).
        self.clipped = [p for group in self.parts.optimizer.param_groups for p in group["params"]]

    @classmethod
    def of(cls, run: Run) -> Step:
        """The step ``run``'s recipe asks for (``train.precision``, ``train.grad_clip``, ``train.accumulate_steps``,
        ``train.grad_cache_chunks``), with the parts' scaler."""
        train = run.recipe.train
        return cls(run, train.precision, run.parts.scaler, train.grad_clip, train.accumulate_steps, train.grad_cache_chunks)

    def autocast(self) -> torch.autocast:
        """The step's precision (``train.precision``) for a forward pass."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def gradients(self, images: Tensor, places: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], StepOutputs]:
        """The batch's gradients (scaled by the loss scaler), added to the parameters' ``.grad``; returns the
        loss, the loss's metrics (this process's, detached) and the step's outputs."""
        return self.backward(self.parts, images, places, self.parts_of_batch, self.run.step, self.device,
                             self.autocast, self.scaler)

    def __call__(self, images: Tensor, places: Tensor | None = None) -> tuple[dict[str, float], StepOutputs]:
        """The step's metrics and outputs (for callbacks such as an online probe; the graph is already freed)."""
        parts, scaler, step = self.parts, self.scaler, self.run.step
        scheduled = parts.schedules.apply(step)
        parts.optimizer.zero_grad(set_to_none=True)
        loss, extras, out = self.gradients(images, places)
        metrics = reduced_metrics(loss, extras)
        value = metrics["loss"]
        if value != value or value in (float("inf"), float("-inf")):
            # Checked before the update (on every rank): a NaN step must never reach the weights. The
            # gradients it left are cleared by the next step's zero_grad, or never used when the run stops.
            raise NonFiniteLossError(f"the loss is {value}")
        if self.grad_clip is not None:
            scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_(self.clipped, self.grad_clip)
        freeze_gradients(parts.optimizer, step)  # after clipping: a frozen group's norm still counts, as in the papers
        lr = parts.optimizer.param_groups[0]["lr"]  # the rate this step used
        scaler.step(parts.optimizer)
        scaler.update()
        if parts.scheduler is not None:
            parts.scheduler.step()
        if parts.whole_template is not None:  # sharded (train.strategy: fsdp)
            # A part whose forward ran without a backward (a projector a token-level loss leaves out) is still
            # gathered whole on every process; the step is over, so its shards are all it needs to keep.
            reshard(parts.network)
            reshard(parts.loss_fn)
        if self.loss_after_step is not None:
            self.loss_after_step()
        metrics = {"loss": value, "lr": lr, **{k: v for k, v in metrics.items() if k != "loss"}, **scheduled}
        if parts.target is not None:
            metrics["target_momentum"] = float(parts.target.momentum)  # the momentum this update uses
            parts.target.update(parts.network)
        return metrics, out
