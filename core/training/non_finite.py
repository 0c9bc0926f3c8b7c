"""A NaN or infinite loss never reaches the weights, decided on the device: no host read per step.

The loss (averaged over ranks, so every process decides alike) is checked with ``isfinite`` on the device;
the result joins a sticky flag, ``healthy``, that stays false from the first bad step on. What a step
changes is then kept or undone by that flag, without the host looking at it:

- the optimizer's update: an optimizer that takes a ``found_inf`` tensor (torch's protocol for GradScaler,
  ``_step_supports_amp_scaling``: torch's fused SGD, Adam, AdamW, Adagrad) skips it on the device, step counts
  included. Any other optimizer (timm's LARS and LAMB, a plugin's) steps, and its parameters and state are
  then put back from copies taken just before: no host read either, for the transient memory of one copy of
  the parameters and the optimizer's state during ``step()`` (activations are freed by then);
- the buffers a forward pass changes (BatchNorm statistics, a loss's queue or center, the target network's
  statistics): copied before the step, put back with ``torch.where`` after it;
- the EMA target's update: its weight is multiplied by the flag (clrun.training.model.target).

fp16's loss scaler adds its own skip (gradients that overflowed) to the optimizer's, as its ``step`` would,
without its host read.

The loop reads the losses with the step metrics (clrun.training.step_metrics) and stops the run there, with
``NonFiniteLossError`` naming the first bad step: every step from it on was skipped, so the weights are still
those of the last good step.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite; no optimizer step was taken from that step on, so the weights are still the
    last good ones."""


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` skips an update by a ``found_inf`` tensor itself (torch's protocol). A torch
    optimizer's groups say whether they are fused: a checkpoint written by a run that was not (an older
    cl-run's) restores its groups unfused, and those refuse ``found_inf``."""
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False
    return all(group.get("fused", True) for group in optimizer.param_groups)


def _local(t: Tensor) -> Tensor:
    """A sharded tensor's (DTensor's) local shard, where ``torch.where`` with a plain flag can write."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


class NonFiniteGuard:
    """The step's sticky health flag and what it keeps; ``modules``: whose buffers a step may change."""

    def __init__(self, modules: Iterable[nn.Module | None], device: torch.device) -> None:
        self.healthy = torch.ones((), dtype=torch.bool, device=device)
        self.buffers: list[Tensor] = []
        seen: set[int] = set()
        for module in modules:
            for buffer in () if module is None else module.buffers():
                if id(buffer) not in seen:
                    seen.add(id(buffer))
                    self.buffers.append(buffer)
        self.saved: list[Tensor] = [torch.empty_like(b) for b in self.buffers]

    def before_step(self) -> None:
        """Copy the buffers the step is about to change (device copies, no read)."""
        if self.saved:
            torch._foreach_copy_(self.saved, self.buffers)

    def check(self, loss: Tensor) -> Tensor:
        """Fold this step's (rank-averaged) ``loss`` into the flag; the flag, as a tensor."""
        self.healthy = self.healthy & torch.isfinite(loss)
        return self.healthy

    def skip(self) -> Tensor:
        """1.0 where the update must be skipped, else 0.0 (the form ``found_inf`` takes)."""
        return (~self.healthy).float()

    def after_step(self) -> None:
        """Put the buffers back where the step was skipped."""
        for buffer, saved in zip(self.buffers, self.saved):
            torch.where(self.healthy, buffer, saved, out=buffer)


def step_skipping(optimizer: torch.optim.Optimizer, found_inf: Tensor) -> None:
    """``optimizer.step()``, its update undone on the device where ``found_inf`` is 1.0."""
    if skips_on_device(optimizer):
        optimizer.found_inf = found_inf  # what torch's optimizers read in step(), as GradScaler sets them
        optimizer.grad_scale = None
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale
        return
    tensors = [_local(t.detach()) for t in _updated_tensors(optimizer)]
    saved = [t.clone() for t in tensors]
    optimizer.step()
    keep = found_inf == 0
    for t, before in zip(tensors, saved):
        torch.where(keep, t, before, out=t)
    # State an optimizer makes at its first step (a momentum buffer) did not exist before: after a skipped
    # first step it holds the bad step's values; the run stops at the next read and saves nothing.


def _updated_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """What ``optimizer.step()`` may change: the parameters with a gradient and their state's tensors."""
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                out.append(p)
                out += [v for v in optimizer.state.get(p, {}).values() if isinstance(v, Tensor)]
    return out


def scaler_overflow(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> Tensor:
    """1.0 where fp16's unscaled gradients overflowed (after ``scaler.unscale_(optimizer)``), as the scaler
    found it; the scaler's own ``step`` would read it on the host."""
    # torch's GradScaler keeps it per device in this (internal, long-stable) record, which update() reads.
    found = scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values()
    return torch.stack([f.reshape(()) for f in found]).amax()
