"""One optimizer step: views on the device, online (and target) network, loss, backward, update."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clrun import distributed
from clrun.training.model.outputs import StepOutputs
from clrun.training.optim.param_groups import freeze_gradients
from clrun.training.parts import Parts
from clrun.training.model.reads import branch_wants
from clrun.training.run import Run
from clrun.training.parallel.sharding import reshard

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite; no optimizer step was taken, so the weights are still the last good ones.

    A stateful loss may already have queued this batch's keys: the run stops, and resuming from the
    checkpoint restores that state with the weights."""


def split_loss(result: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """A loss returns a scalar tensor or ``{"loss": tensor, **metrics}``."""
    if isinstance(result, Tensor):
        return result, {}
    if isinstance(result, dict) and isinstance(result.get("loss"), Tensor):
        extras = {k: torch.as_tensor(v).detach() for k, v in result.items() if k != "loss"}
        return result["loss"], extras
    raise TypeError(f"a loss must return a scalar tensor or a dict with 'loss'; got {type(result).__name__}")


def forward_and_loss(parts: Parts, images: Tensor, device: torch.device, step: int,
                     places: Tensor | None = None) -> tuple[Any, StepOutputs]:
    """Views on the device (cropped inside each image's ``places`` when the data set letterboxes: they stay
    on the CPU, where the crops are drawn), their masks (a ``masking:`` section), the target network's
    branch on the global ones (no gradient), then the online network and the loss (``parts.trainable``,
    DDP-wrapped when several processes train). Each network makes the optional outputs ``parts.reads``
    names (what the loss reads)."""
    views = parts.views(images.to(device, non_blocking=True), places)
    is_global = parts.views.is_global
    masking = parts.masking
    masks = masking.draw(parts.network.backbone, views, is_global) if masking is not None else None
    target = None
    if parts.target is not None:
        target = parts.target([v for v, g in zip(views, is_global) if g], branch_wants(parts.reads, "target"))
    drop = masking is not None and masking.drop
    return parts.trainable(views, is_global, target, step, parts.total_steps, masks, drop,
                           branch_wants(parts.reads, "online"))


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

    def __init__(self, run: Run, precision: str, scaler: torch.amp.GradScaler, grad_clip: float | None) -> None:
        self.run, self.parts, self.device = run, run.parts, run.device
        self.dtype = PRECISIONS[precision]
        self.scaler, self.grad_clip = scaler, grad_clip
        # What clipping measures: every parameter the optimizer holds (its groups are fixed for the run).
        self.clipped = [p for group in self.parts.optimizer.param_groups for p in group["params"]]

    @classmethod
    def of(cls, run: Run) -> Step:
        """The step ``run``'s recipe asks for (``train.precision``, ``train.grad_clip``), with the parts' scaler."""
        return cls(run, run.recipe.train.precision, run.parts.scaler, run.recipe.train.grad_clip)

    def __call__(self, images: Tensor, places: Tensor | None = None) -> tuple[dict[str, float], StepOutputs]:
        """The step's metrics and outputs (for callbacks such as an online probe; the graph is already freed)."""
        parts, scaler, dtype, step = self.parts, self.scaler, self.dtype, self.run.step
        scheduled = parts.schedules.apply(step)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            result, out = forward_and_loss(parts, images, self.device, step, places)
            loss, extras = split_loss(result)
        metrics = reduced_metrics(loss, extras)
        value = metrics["loss"]
        if value != value or value in (float("inf"), float("-inf")):
            # Checked before backward: a NaN step must never reach the weights (on any rank).
            raise NonFiniteLossError(f"the loss is {value}")
        parts.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
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
        metrics = {"loss": value, "lr": lr, **{k: v for k, v in metrics.items() if k != "loss"}, **scheduled}
        if parts.target is not None:
            metrics["target_momentum"] = float(parts.target.momentum)  # the momentum this update uses
            parts.target.update(parts.network)
        return metrics, out
