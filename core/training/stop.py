"""Stopping on a signal without losing work: SIGTERM (how clusters preempt a job) and SIGINT (Ctrl-C)
stop the run at the next step boundary, after which the loop writes a checkpoint with the position in
the epoch, so ``--resume`` continues bit-exactly where the run stopped.

The handler only sets a flag: a checkpoint being written when the signal arrives is finished first.
A second SIGINT stops at once (KeyboardInterrupt), for a user who does not want to wait for the step.
Under torchrun every process gets the signal, but perhaps at different steps: the processes agree on
the stop so that all of them stop after the same step. The agreement never waits on the GPU: each step
every process starts a max over ranks of its flag on a CPU (gloo) group, without waiting, and takes the
result one step later, when it has long arrived; every process reads the same result at the same step, so
a signal is acted on within two steps wherever it arrived, not only when the metrics are read.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional

import torch
import torch.distributed as dist

from clrun import distributed

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run stopped on a signal after a step; ``checkpoint`` says what was kept."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


class StopOnSignal:
    """``with StopOnSignal(group) as stop:`` ... ``if stop.requested(): ...`` at each step boundary
    (``group``: a CPU (gloo) process group every process shares, None with one process)."""

    def __init__(self, group: Optional[object] = None) -> None:
        self.group = group
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}
        self._asked: Optional[tuple[torch.Tensor, object]] = None  # the max started last step, and its work

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers there only
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._take()  # no collective left running on the group (an evaluation barrier uses it next)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = signum

    def requested(self) -> Optional[int]:
        """The signal to stop on, agreed by every process (the largest number any of them received by the
        previous call), or None."""
        if self.group is None or not distributed.active():
            return self.signum
        agreed = self._take()
        flag = torch.tensor([self.signum or 0], dtype=torch.int64)  # on the host: gloo reduces it there
        self._asked = flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed or None

    def _take(self) -> int:
        """The result of the max started at the previous call (0 if none)."""
        if self._asked is None:
            return 0
        flag, work = self._asked
        self._asked = None
        work.wait()
        return int(flag[0])
