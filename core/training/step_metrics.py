"""Step metrics read in batches: a step's metrics stay on the device until the loop reads them, every
``train.log_every`` steps, in one transfer for all the steps since the last read.

Reading a value computed on a GPU makes the host wait for everything queued before it: read every step,
the host can never run ahead to launch the next step while the GPU computes this one. So a step records
its device scalars (the loss, the loss's metrics, what callbacks add with ``Run.add_step_metric``) next to
the host values it already has (the learning rate, scheduled settings), and ``read`` turns every pending
step into plain floats at once. The loop then calls ``clrun_step_end`` for each of those steps in order,
with that step's own values: the per-step contract holds, the values arrive late by at most
``log_every - 1`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class StepRecord:
    """One step's metrics: ``host`` values known to Python, ``names`` of the 1-d ``values`` on the device."""

    step: int  # the step's number, counted from 1
    epoch: int  # epochs completed when it ran
    host: dict[str, float]
    names: list[str]
    values: Tensor
    extra_names: list[str] = field(default_factory=list)  # added by callbacks during the step
    extra_values: list[Tensor] = field(default_factory=list)


@dataclass
class ReadStep:
    """A step's metrics as floats, in the order the step reported them."""

    step: int
    epoch: int
    metrics: dict[str, float]


class PendingSteps:
    """The steps whose metrics were not read yet."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: StepRecord) -> None:
        self.records.append(record)

    def read(self) -> list[ReadStep]:
        """Every pending step's metrics as floats, in one device-to-host transfer; the list is emptied."""
        if not self.records:
            return []
        device = self.records[0].values.device
        parts = [v.float().reshape(-1) for r in self.records for v in (r.values, *r.extra_values)]
        values = torch.cat([p.to(device, non_blocking=True) for p in parts]).tolist()  # the one read
        out, at = [], 0
        for record in self.records:
            names = [*record.names, *record.extra_names]
            own = dict(zip(names, values[at:at + len(names)]))
            at += len(names)
            metrics = {**({"loss": own.pop("loss")} if "loss" in own else {}), **record.host, **own}
            out.append(ReadStep(record.step, record.epoch, metrics))
        self.records = []
        return out


def default_log_every(device: torch.device) -> int:
    """How often the metrics are read when the recipe leaves ``train.log_every`` unset: every step on the CPU,
    where a read waits for nothing; every 100 steps on an accelerator, where a read drains the queue the
    host had run ahead into (at most a step's time lost per read: under 1% of the run)."""
    return 1 if device.type == "cpu" else 100
