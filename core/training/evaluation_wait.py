"""Where the other processes of a distributed run wait while rank 0 evaluates.

The recipe's callbacks, the evaluators among them, exist on rank 0 only (``clrun.hookspecs.RunSpecs``): at
an epoch's end and at the run's end rank 0 embeds the evaluation sets and runs kNN, probes, fine-tuning,
while the other processes have nothing to do. Without this module they wait in the next collective, under
the process group's timeout (NCCL's watchdog kills a collective that waits longer); an ImageNet kNN can take
longer than that, and a timeout there reads as a hung collective. Here they wait at a barrier of their own,
on a gloo group (a CPU barrier costs no GPU, and gloo's ``monitored_barrier`` takes a timeout and names
the late process) whose timeout the recipe sets, and a timeout says what was waited for and what to change.

Why not every process embedding its share: the evaluators would have to exist on every rank and gather
their features, which changes the contract of every third-party evaluator (today: rank 0, no collectives).
Waiting keeps that contract; embedding on rank 0 alone costs time, not memory, on the others.

Used by the training loop: ``EvaluationWait(timeout)`` on every process at the same point (it creates a
process group: a collective), then ``wait()`` on every process after each hook call in which rank 0 may
evaluate.
"""

from __future__ import annotations

import datetime

import torch.distributed as dist

from clrun import distributed
from clrun.errors import TrainingHalted


class EvaluationTimeout(TrainingHalted):
    """A process waited longer than the recipe allows for rank 0's evaluators."""


class EvaluationWait:
    """A barrier with its own ``timeout`` on which every process meets after rank 0's evaluations.

    Created on every process at the same point (it makes a gloo process group, a collective); nothing
    without a process group of several processes.
    """

    def __init__(self, timeout: datetime.timedelta) -> None:
        self.timeout = timeout
        # Rank 0 calls new_group at the same point as the others (before any evaluation), so creating it
        # never waits on an evaluation itself.
        self.group = dist.new_group(backend="gloo", timeout=timeout) if distributed.active() else None

    def wait(self, where: str = "an evaluation") -> None:
        """Return when every process has called it (rank 0 once its evaluators are done); raise
        ``EvaluationTimeout`` after ``timeout``. ``where`` names the point in messages ("epoch 3's end")."""
        if self.group is None:
            return
        try:
            dist.monitored_barrier(group=self.group, timeout=self.timeout)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            minutes = f"{self.timeout.total_seconds() / 60:g} min"
            if distributed.is_main():  # rank 0 was the late one: the others gave up on it
                what = (f"process 0 finished its evaluators at {where} after the other processes had stopped "
                        f"waiting for it ({minutes})")
            else:
                what = (f"process {distributed.rank()} waited more than {minutes} at {where} for rank 0, which runs "
                        f"the evaluators there (kNN, probes, fine-tuning)")
            raise EvaluationTimeout(
                f"{what}; if the evaluation takes that long, raise train.evaluation_timeout_minutes, evaluate less "
                f"often (the evaluator's every:) or on fewer images ({detail})") from None
