"""Training a recipe through cl-run's public API while a run callback watches its steps.

``train(planned, watch)`` runs ``clrun.train(clrun.load_recipe(recipe, overrides))`` with the callback
``bench/gpu_check_probe`` added to the run's. The callback hands every step's end to ``watch``, a ``Watch``:
it opens a window after ``watch.warmup`` steps and closes it ``watch.steps`` steps later (the device
synchronized at both ends when ``timed``), calls ``opened`` / ``stepped`` for the counters of the sync audit,
and keeps the last step's views for the model-only comparison. Only step numbers are read from the hooks,
never the metrics.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import clrun
import torch

from gpu_check import machine
from gpu_check.components import register
from gpu_check.recipes import Planned

SHM_NEEDED = 32 * 2**30


@dataclass
class Watch:
    """What one run's callback does and finds."""

    device: torch.device
    warmup: int  # steps before the window opens
    steps: int  # steps inside it
    timed: bool = True  # synchronize the device and read the clock at both ends (not in the sync audit: it would count)
    keep_views: bool = False  # keep the last step's views and masks (the model-only step's ready inputs)
    opened: Callable[[], None] | None = None
    stepped: Callable[[int], None] | None = None  # after each step in the window, with its index there (1..steps)
    run: Any = None  # the clrun.Run, from clrun_run_start
    started_at: float | None = None  # when clrun_run_start was called
    opened_at: float | None = None
    closed_at: float | None = None
    peak_bytes: int | None = None  # the device allocator's peak over the window
    views: list[torch.Tensor] | None = None
    is_global: list[bool] | None = None
    masks: Any = None
    steps_seen: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.warmup + self.steps

    def step_done(self, step: int) -> None:
        self.steps_seen.append(step)
        if step == self.warmup:
            if self.timed:
                machine.sync(self.device)
                machine.reset_peak(self.device)
            self.opened_at = time.perf_counter()
            if self.opened:
                self.opened()
        elif self.warmup < step <= self.total:
            if self.stepped:
                self.stepped(step - self.warmup)
            if step == self.total:
                if self.timed:
                    machine.sync(self.device)
                    self.peak_bytes = machine.peak_bytes(self.device)
                self.closed_at = time.perf_counter()

    def seconds_per_step(self) -> float:
        if self.opened_at is None or self.closed_at is None:
            raise RuntimeError(f"the run ended after steps {self.steps_seen[-3:]}, before its window's last step, "
                               f"{self.total}")
        return (self.closed_at - self.opened_at) / self.steps

    def warmup_seconds(self) -> float:
        """From the run's start (everything built) to the window's opening: the warm-up steps, with any compile."""
        return self.opened_at - self.started_at


class Probe:
    """The run callback. ``Probe.watch`` is set before each run (one run at a time in this process).

    Steps are counted at ``clrun_step_outputs``, called right after each step; ``clrun_step_end`` comes in
    batches, when the loop reads the metrics from the device (``train.log_every``)."""

    watch: Watch | None = None
    reads = frozenset({"views"})  # what clrun_step_outputs reads (cl-run checks it against the recipe)

    def clrun_run_start(self, run: Any) -> None:
        Probe.watch.run = run
        Probe.watch.started_at = time.perf_counter()

    def clrun_step_outputs(self, run: Any, outputs: Any, labels: Any) -> None:
        watch = Probe.watch
        if watch.keep_views and run.step == watch.total:
            watch.views = [v.detach() for v in outputs.views]
            watch.is_global, watch.masks = list(outputs.is_global), outputs.masks
        watch.step_done(run.step)


def scratch_root() -> str | None:
    """Run folders in memory where there is room: the final checkpoint of I-JEPA's ViT-H (weights, target and
    AdamW moments) and its encoder file are about 13 GB, seconds on a disk and part of the machine's few
    minutes. A container's small /dev/shm (64 MB by default) is left alone: the default temporary folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > SHM_NEEDED else None


@contextlib.contextmanager
def without_report() -> Iterator[None]:
    """No run report: its plots (matplotlib, absent on the GPU machine) take seconds of host time after the
    last step, more than a short run's training. cl-run writes the report in a ``try`` that turns any failure
    into a warning, so an unimportable ``clrun.report`` skips it and nothing else."""
    saved = sys.modules.get("clrun.report")
    sys.modules["clrun.report"] = None  # type: ignore[assignment]  (import fails: "halted; None in sys.modules")
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["clrun.report"]
        else:
            sys.modules["clrun.report"] = saved


@contextlib.contextmanager
def console_to(log: Path | None, title: str) -> Iterator[None]:
    """cl-run's console output (progress lines, warnings) appended to ``log``, under ``title``."""
    if log is None:
        yield
        return
    with log.open("a") as sink:
        sink.write(f"\n=== {title}\n")
        sink.flush()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield


def load(planned: Planned, run_dir: str) -> Any:
    """The recipe ``planned`` trains, through ``clrun.load_recipe`` (the check's components offered first)."""
    register()
    return clrun.load_recipe(planned.recipe.path, planned.all_overrides(run_dir))


def train(planned: Planned, watch: Watch, log: Path | None = None) -> Any:
    """Train ``planned`` while ``watch`` looks on; cl-run's console output goes to ``log``. Returns the
    ``clrun.Run``; its folder is deleted."""
    folder = tempfile.mkdtemp(prefix="gpu-check-run-", dir=scratch_root())
    try:
        recipe = load(planned, folder)
        Probe.watch = watch
        with console_to(log, f"{planned.recipe.name} {' '.join(planned.overrides)}"), without_report():
            return clrun.train(recipe)
    finally:
        Probe.watch = None
        shutil.rmtree(folder, ignore_errors=True)
