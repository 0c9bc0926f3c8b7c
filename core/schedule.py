"""Schedules for any scalar: a number in a recipe that changes over the run.

Wherever a loss, projector, predictor or optimizer takes a float, a recipe may give a schedule instead::

    teacher_temperature: {schedule: linear, start: 0.04, end: 0.07, until_epoch: 30}   # then 0.07
    weight_decay: {schedule: cosine, start: 0.04, end: 0.4}                            # over the whole run
    momentum: {schedule: cosine, start: 0.996, end: 1.0, warmup_epochs: 1, warmup_start: 0.9}

The value goes from ``start`` to ``end`` between ``from_epoch`` (default 0) and ``until_epoch`` (default:
the end of the run), or between ``from_step`` and ``until_step``, along ``linear`` or ``cosine`` (half a
cosine: flat at both ends); ``constant`` stays at ``start``. Before the span it is ``start``, after it
``end``. ``warmup_epochs`` / ``warmup_steps`` first go linearly from ``warmup_start`` (default 0) to
``start``, and the span begins after the warm-up. ``per: epoch`` holds each epoch's first value through the
epoch (a staircase, as the reference code of the self-distillation methods indexes its teacher-temperature
schedule by epoch: their ``--warmup_teacher_temp_epochs W`` is ``{schedule: linear, ..., until_epoch: W - 1,
per: epoch}``, which reaches ``end`` in epoch W - 1). ``offset_steps: N`` gives step k the value at k + N
(I-JEPA's weight-decay schedule is stepped before each update and counts first: ``offset_steps: 1``). The
value at a step is a function of the step alone, so a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional


class ScheduleError(ValueError):
    """A schedule's settings contradict each other; ``field`` is the setting at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Schedule:
    schedule: Literal["constant", "linear", "cosine"]
    start: float
    end: Optional[float] = None  # required unless constant
    from_epoch: Optional[float] = None
    until_epoch: Optional[float] = None
    from_step: Optional[int] = None
    until_step: Optional[int] = None
    warmup_epochs: Optional[float] = None
    warmup_steps: Optional[int] = None
    warmup_start: float = 0.0
    per: Literal["step", "epoch"] = "step"  # epoch: each epoch's first value, held through the epoch
    offset_steps: int = 0  # step k gets the value at k + offset_steps (a schedule stepped before its update)

    def __post_init__(self) -> None:
        if self.end is None and self.schedule != "constant":
            raise ScheduleError("end", f"a {self.schedule} schedule needs an end value")
        if self.schedule == "constant" and self.end is not None and self.end != self.start:
            raise ScheduleError("end", f"a constant schedule stays at start ({self.start}); remove end or use linear")
        for epochs, steps in (("from_epoch", "from_step"), ("until_epoch", "until_step"), ("warmup_epochs", "warmup_steps")):
            if getattr(self, epochs) is not None and getattr(self, steps) is not None:
                raise ScheduleError(steps, f"give {epochs} or {steps}, not both")
            for name in (epochs, steps):
                if (getattr(self, name) or 0) < 0:
                    raise ScheduleError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.offset_steps < 0:
            raise ScheduleError("offset_steps", f"must be >= 0, got {self.offset_steps}")

    @property
    def initial(self) -> float:
        """The value before the first step: what the component is built with."""
        return self.warmup_start if (self.warmup_epochs or self.warmup_steps) else self.start

    def at(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        """The value for the step after ``step`` completed ones."""
        step += self.offset_steps
        if self.per == "epoch":
            step -= step % max(steps_per_epoch, 1)
        warmup = self._steps(self.warmup_epochs, self.warmup_steps, steps_per_epoch, 0)
        if step < warmup:
            return self.warmup_start + (self.start - self.warmup_start) * step / warmup
        begin = warmup + self._steps(self.from_epoch, self.from_step, steps_per_epoch, 0)
        finish = self._steps(self.until_epoch, self.until_step, steps_per_epoch, total_steps)
        if self.schedule == "constant" or (step <= begin and finish > begin):
            return self.start
        if step >= finish:
            return self.end
        progress = (step - begin) / (finish - begin)
        if self.schedule == "linear":
            return self.start + (self.end - self.start) * progress
        return self.end - (self.end - self.start) * (math.cos(math.pi * progress) + 1) / 2

    @staticmethod
    def _steps(epochs: Optional[float], steps: Optional[int], steps_per_epoch: int, default: int) -> int:
        if steps is not None:
            return steps
        return round(epochs * steps_per_epoch) if epochs is not None else default

    def describe(self) -> str:
        if self.schedule == "constant":
            return f"constant {self.start:g}"
        span = []
        for label, epochs, steps in (("from", self.from_epoch, self.from_step), ("until", self.until_epoch, self.until_step)):
            if epochs is not None:
                span.append(f"{label} epoch {epochs:g}")
            elif steps is not None:
                span.append(f"{label} step {steps}")
        warmup = ""
        if self.warmup_epochs is not None or self.warmup_steps is not None:
            length = f"{self.warmup_epochs:g} epoch(s)" if self.warmup_epochs is not None else f"{self.warmup_steps} step(s)"
            warmup = f"warm-up {self.warmup_start:g} -> {self.start:g} over {length}, then "
        if self.per == "epoch":
            span.append("per epoch")
        if self.offset_steps:
            span.append(f"{self.offset_steps} step(s) ahead")
        return f"{warmup}{self.schedule} {self.start:g} -> {self.end:g}" + (f" ({', '.join(span)})" if span else "")

    def plain(self) -> dict:
        """As written in a recipe (the resolved recipe in a run folder)."""
        fields = {k: v for k, v in self.__dict__.items() if v is not None}
        if fields.get("warmup_start") == 0.0 and self.warmup_epochs is None and self.warmup_steps is None:
            del fields["warmup_start"]
        if fields.get("per") == "step":
            del fields["per"]
        if fields.get("offset_steps") == 0:
            del fields["offset_steps"]
        return fields
