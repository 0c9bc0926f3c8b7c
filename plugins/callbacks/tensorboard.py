"""TensorBoard logging of a run's metrics and recipe (``torch.utils.tensorboard``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

from clrun import Range, Run, UserError, checked, hookimpl

NAME = "clrun/tensorboard"
SUBFOLDER = "tensorboard"
MISSING = f"{NAME} needs the tensorboard package: pip install 'cl-run[tensorboard]'"


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@checked
class TensorBoardLogger:
    """Writes the run's metrics as TensorBoard scalars and its resolved recipe as text.

    Tags: ``step/<metric>`` every ``every_steps`` steps, ``epoch/<metric>`` (the epoch record: means and
    evaluations) after each epoch, ``final/<metric>`` at the end; the recipe is the text ``recipe``.
    Every scalar's x-axis is the optimizer step (an epoch's record sits at its last step), so one
    chart can hold step and epoch curves; a resumed run appends to the same folder and hides what
    the interrupted run logged after its checkpoint.

    log_dir:     where the event files go (default: ``tensorboard`` in the run folder)
    every_steps: log step metrics every this many steps (0: no step metrics)
    """

    def __init__(self, log_dir: Optional[str] = None,
                 every_steps: Annotated[int, Range(min=0, hint="0: no step metrics")] = 10) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(MISSING) from None
        self._writer_class = SummaryWriter
        self.log_dir, self.every_steps = log_dir, every_steps
        self.writer = None

    def clrun_run_start(self, run: Run) -> None:
        if self.log_dir is not None:
            folder = Path(self.log_dir)
        elif run.folder is not None:
            folder = run.folder.path / SUBFOLDER  # this plugin's own folder inside the run folder
        else:
            return  # a run that writes nothing (`cl-run check`)
        # On resume, hide the events an interrupted run wrote after its checkpoint's step.
        self.writer = self._writer_class(str(folder), purge_step=run.step + 1 if run.step else None)
        recipe = run.folder.recipe if run.folder is not None else None
        if recipe is not None and recipe.is_file():
            text = recipe.read_text(encoding="utf-8")
            self.writer.add_text("recipe", "```yaml\n" + text + "```", global_step=run.step)

    def _scalars(self, prefix: str, metrics: Mapping[str, Any], step: int) -> None:
        for key, value in metrics.items():
            number = _scalar(value)
            if number is not None:
                self.writer.add_scalar(f"{prefix}/{key}", number, global_step=step)

    # Wrappers: the code after ``yield`` runs once every other callback has run this hook, so the
    # scalars include what they added (kNN, online probe, health), whatever the recipe's order.
    @hookimpl(wrapper=True)
    def clrun_step_end(self, run: Run, step: int, metrics: Mapping[str, float]):
        try:
            return (yield)
        finally:
            if self.writer is not None and self.every_steps and step % self.every_steps == 0:
                self._scalars("step", metrics, step)

    @hookimpl(wrapper=True)
    def clrun_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]):
        try:
            return (yield)
        finally:  # also when a callback stops the run at this epoch: its record is still written
            if self.writer is not None:
                self._scalars("epoch", {**metrics, "epoch": epoch}, run.step)
                self.writer.flush()

    @hookimpl(wrapper=True)
    def clrun_run_end(self, run: Run, metrics: dict[str, float]):
        try:
            return (yield)
        finally:
            if self.writer is not None:
                self._scalars("final", metrics, run.step)
            self._close()

    def clrun_run_error(self, run: Run, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
