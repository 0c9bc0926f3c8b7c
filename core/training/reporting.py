"""Built-in run callbacks: the console (progress bar, one line per epoch) and the metrics file."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

from clrun import distributed
from clrun.errors import TrainingHalted
from clrun.training import run_dir
from clrun.training.run import Run


def format_metrics(metrics: Mapping[str, Any]) -> str:
    parts = []
    for k, v in metrics.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}" if abs(v) < 1e4 else f"{k} {v:.0f}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)


class Console:
    """A progress bar per epoch (on a terminal) and a one-line summary per epoch, always."""

    def __init__(self, progress: bool, stream=None) -> None:
        self.progress = progress and sys.stderr.isatty()
        self._stream = stream  # None: whatever sys.stdout is when a line is printed
        self.bar = None

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    def clrun_run_start(self, run: Run) -> None:
        where = f" -> {run.directory}" if run.directory else ""
        world = distributed.world_size()
        processes = f" x {world} processes" if world > 1 else ""
        print(f"cl-run: training {run.recipe.source} on {run.device}{processes}{where}", file=self.stream, flush=True)
        self._new_bar(run)

    def _new_bar(self, run: Run) -> None:
        if self.progress and run.epoch < run.recipe.train.epochs:
            from tqdm import tqdm

            self.bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {run.epoch + 1}/{run.recipe.train.epochs}",
                            leave=False, file=sys.stderr, dynamic_ncols=True)

    def clrun_step_end(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)

    def clrun_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(f"epoch {epoch}/{run.recipe.train.epochs}  {format_metrics(metrics)}", file=self.stream, flush=True)
        self._new_bar(run)

    def clrun_run_end(self, run: Run, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
        print(f"done  {format_metrics(metrics)}", file=self.stream, flush=True)

    def clrun_run_error(self, run: Run, error: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLog:
    """``metrics.jsonl`` in the run folder: one record per step, per epoch and at the end."""

    def __init__(self) -> None:
        self.started = time.time()

    def clrun_step_end(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        run_dir.append_metrics(run.directory, {"kind": "step", "step": step, "epoch": run.epoch + 1, **metrics})

    def clrun_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        run_dir.append_metrics(run.directory, {"kind": "epoch", "epoch": epoch, "step": run.step, **metrics})

    def clrun_run_end(self, run: Run, metrics: dict[str, float]) -> None:
        self._final(run, metrics)

    def clrun_run_error(self, run: Run, error: BaseException) -> None:
        if isinstance(error, TrainingHalted):  # a deliberate stop: record why, for the report
            self._final(run, {"halted": str(error)})

    def _final(self, run: Run, metrics: dict[str, Any]) -> None:
        record = {"epoch": run.epoch, "step": run.step, "wall_time_s": round(time.time() - self.started, 2), **metrics}
        run_dir.append_metrics(run.directory, {"kind": "final", **record})
        run_dir.write_summary(run.directory, record)
