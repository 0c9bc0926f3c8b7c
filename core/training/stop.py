"""Stopping on a signal without losing work: SIGTERM (how clusters preempt a job) and SIGINT (Ctrl-C)
stop the run at the next step boundary, after which the loop writes a checkpoint with the position in
the epoch, so ``--resume`` continues bit-exactly where the run stopped.

The handler only sets a flag: a checkpoint being written when the signal arrives is finished first.
A second SIGINT stops at once (KeyboardInterrupt), for a user who does not want to wait for the step.
Under torchrun every process gets the signal, but perhaps at different steps: the processes agree on
the stop (a max over ranks each step) so that all of them stop after the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional

import torch

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
    """``with StopOnSignal(device) as stop:`` ... ``if stop.requested(): ...`` at each step boundary
    (``device``: where the processes' agreement is computed, the training device)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers there only
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = signum

    def requested(self) -> Optional[int]:
        """The signal to stop on, agreed by every process (the largest number any of them received)."""
        if not distributed.active():
            return self.signum
        agreed = int(distributed.all_reduce_max(torch.tensor([self.signum or 0], device=self.device)))
        return agreed or None
