"""Built-in run callbacks: the console (progress bar, one compact line per epoch, a final table) and the
metrics file. Both run after every other callback of a hook (``trylast``), so they see what the
recipe's callbacks and the health monitor added."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

from clrun import distributed
from clrun.errors import TrainingHalted
from clrun.hookspecs import hookimpl
from clrun.training.run import Run

PROJECTOR = "_projector"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    parts = []
    for k, v in metrics.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}" if abs(v) < 1e4 else f"{k} {v:.0f}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)


def compact(run: Run, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What a person follows epoch by epoch: loss, learning rate, speed, the share of it spent waiting for
    data, the loss's own main metric and the collapse signal of the branch the alarm watches. Everything else is in the run folder's files."""
    loss_metric = getattr(run.parts.loss_fn, "main_metric", None)
    signal = f"std_sqrt_d_{run.recipe.health.alarm.branch}"
    keys = ["loss", "lr", "images_per_s", "data_wait", loss_metric, signal]
    return {k: metrics[k] for k in keys if k is not None and k in metrics}


# Evaluation scores in [0, 1], shown as percentages: accuracies (``knn_top1``) and the dense evaluations'
# mean IoU and pixel accuracy (``<name>_miou``, ``<name>_pixel_accuracy``), recognized by their suffix.
PERCENT_SUFFIXES = ("_top1", "_miou", "_pixel_accuracy")


def results_table(results: Mapping[str, Any], names: list[str] | None = None) -> list[str]:
    """Evaluation results as a backbone | projector table in percent, one row per name (default: the
    scores, metrics ending in ``_top1``, ``_miou`` or ``_pixel_accuracy``, in the order they came); a
    projector result is the name with a ``_projector`` suffix."""
    names = [k for k in results if k.endswith(PERCENT_SUFFIXES)] if names is None else names
    if not names:
        return []
    width = max(24, *map(len, names))
    lines = [f"{'evaluation':<{width}} {'backbone':>9} {'projector':>9}"]
    for name in names:
        cells = [results.get(name), results.get(name + PROJECTOR)]
        lines.append(f"{name:<{width}} " + " ".join(f"{100 * v:>8.2f}%" if isinstance(v, float) else f"{'-':>9}" for v in cells))
    return lines


class Console:
    """A progress bar per epoch (on a terminal), one compact line per epoch (``verbose``: every metric)
    and a summary at the end."""

    def __init__(self, progress: bool, verbose: bool = False, stream=None) -> None:
        self.progress = progress and sys.stderr.isatty()
        self.verbose = verbose
        self._stream = stream  # None: whatever sys.stdout is when a line is printed
        self.bar = None

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    @hookimpl(trylast=True)
    def clrun_run_start(self, run: Run) -> None:
        where = f" -> {run.directory}" if run.directory else ""
        world = distributed.world_size()
        processes = f" x {world} processes" if world > 1 else ""
        self._print(f"cl-run: training {run.recipe.source} on {run.device}{processes}{where}")
        self._new_bar(run)

    def _new_bar(self, run: Run) -> None:
        if self.progress and run.epoch < run.recipe.train.epochs:
            from tqdm import tqdm  # only on a terminal: tqdm is not needed otherwise

            self.bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {run.epoch + 1}/{run.recipe.train.epochs}",
                            leave=False, file=sys.stderr, dynamic_ncols=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @hookimpl(trylast=True)
    def clrun_step_end(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)

    @hookimpl(trylast=True)
    def clrun_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        self._close_bar()
        shown = metrics if self.verbose else compact(run, metrics)
        self._print(f"epoch {epoch}/{run.recipe.train.epochs}  {format_metrics(shown)}")
        self._new_bar(run)

    @hookimpl(trylast=True)
    def clrun_run_end(self, run: Run, metrics: dict[str, float]) -> None:
        self._close_bar()
        self._print(f"done: {run.epoch} epochs, {run.step} steps  {format_metrics(compact(run, metrics))}")
        for line in results_table(metrics):
            self._print("  " + line)

    @hookimpl(trylast=True)
    def clrun_run_error(self, run: Run, error: BaseException) -> None:
        self._close_bar()


class MetricsLog:
    """The run folder's metrics file: one record per step, per epoch and at the end; the summary file."""

    def __init__(self) -> None:
        self.started = time.time()

    @hookimpl(trylast=True)
    def clrun_step_end(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        run.folder.append_metrics({"kind": "step", "step": step, "epoch": run.epoch + 1, **metrics})

    @hookimpl(trylast=True)
    def clrun_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        run.folder.append_metrics({"kind": "epoch", "epoch": epoch, "step": run.step, **metrics})

    @hookimpl(trylast=True)
    def clrun_run_end(self, run: Run, metrics: dict[str, float]) -> None:
        self._final(run, metrics)

    @hookimpl(trylast=True)
    def clrun_run_error(self, run: Run, error: BaseException) -> None:
        if isinstance(error, TrainingHalted):  # a deliberate stop: record why, for the report
            self._final(run, {"halted": str(error)})

    def _final(self, run: Run, metrics: dict[str, Any]) -> None:
        record = {"epoch": run.epoch, "step": run.step, "wall_time_s": round(time.time() - self.started, 2), **metrics}
        run.folder.append_metrics({"kind": "final", **record})
        run.folder.write_summary(record)
