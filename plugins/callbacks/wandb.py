"""Weights & Biases tracking of a run, with the official client (``wandb``): ``clrun/wandb``."""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any, Literal, Optional, Sequence

from clrun import Range, RunFolder, UserError, checked
from clrun.plugins.callbacks.tracking_common import TrackerState, TrackingCallback, scalars, warn

NAME = "clrun/wandb"
SUBFOLDER = "wandb"  # wandb.init(dir=<run folder>) keeps its files here; the callback's state file too
MISSING = f"{NAME} needs the wandb package: pip install 'cl-run[wandb]'"


@checked
class WandbLogger(TrackingCallback):
    """Logs the run to Weights & Biases: the resolved recipe as the run's config, every step, epoch and
    final record of the run's metrics file (``step/<metric>``, ``epoch/<metric>``, ``final/<metric>``, the
    optimizer step as W&B's step), and at the end the report, its plots, the recipe and the summary as a
    ``report`` artifact (the encoder as a ``model`` artifact with ``log_encoder``).

    The W&B run is named after the run folder and its id is kept there (``wandb/cl-run.json``): a
    ``--resume``d or requeued run continues the same W&B run and sends each step once. W&B's local files
    are in the run folder's ``wandb/`` too. The W&B run starts before the first step (within ``timeout_s``);
    when W&B cannot be reached then, it logs offline there, with a warning (``wandb sync`` uploads it
    later). Records and files go from a thread of their own; the end of the run waits for them at most
    ``timeout_s``. The API key comes from the environment (``WANDB_API_KEY``) or ``wandb login``, never from
    the recipe; rank 0 alone logs.

    project:     the W&B project
    entity:      the W&B user or team (default: the API key's default entity)
    group:       the W&B group (to compare runs of a sweep side by side)
    tags:        W&B tags of the run
    mode:        online, offline or disabled (default: ``WANDB_MODE``, else online)
    every_steps: log step records every this many steps (1: all of them, as the metrics file)
    log_encoder: also upload the encoder file (``RunFolder.encoder``) at the end
    timeout_s:   how long W&B may take to start the run (then it logs offline), and the longest the end of
                 the run waits for it
    """

    subfolder = SUBFOLDER
    # wandb.init starts W&B's service process and talks to it: from another thread while the data loader
    # forks its workers, it waited forever or failed (MailboxClosedError) here; logging from there did not.
    open_on_training_thread = True

    def __init__(self, project: str = "cl-run", entity: Optional[str] = None, group: Optional[str] = None,
                 tags: Optional[Sequence[str]] = None, mode: Optional[Literal["online", "offline", "disabled"]] = None,
                 every_steps: Annotated[int, Range(min=1)] = 1, log_encoder: bool = False,
                 timeout_s: Annotated[float, Range(min=0, exclusive_min=True)] = 30.0) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise UserError(MISSING)
        super().__init__(every_steps, log_encoder, timeout_s)
        self.options = {"project": project, "entity": entity, "group": group, "tags": list(tags or []) or None}
        self.mode = mode

    def tracker(self, run: Any) -> "WandbTracker":
        return WandbTracker(self.options, self.mode, self.timeout_s)


class WandbTracker:
    """The W&B side of a ``Sender`` (``clrun.plugins.callbacks.tracking_common``): ``open`` on the training
    thread (see ``WandbLogger.open_on_training_thread``), the rest on the sender's."""

    label = NAME
    chunk = 1000

    def __init__(self, options: dict[str, Any], mode: str | None, timeout_s: float) -> None:
        self.options, self.mode, self.timeout_s = options, mode, timeout_s
        self.where = "/".join(filter(None, (options["entity"], options["project"])))
        self.run = None

    def open(self, state: TrackerState, folder: RunFolder) -> str:
        import wandb

        arguments = dict(self.options, name=folder.path.name, id=state.run_id,
                         resume="allow", dir=str(folder.path), reinit="create_new",
                         settings=wandb.Settings(init_timeout=self.timeout_s))
        try:
            self.run = wandb.init(mode=self.mode, **arguments)
        except Exception as exc:  # no network, no API key, W&B down: a local copy instead
            if self.mode == "offline":
                raise
            warn(f"{NAME}: W&B could not start the run ({type(exc).__name__}: {exc}); logging offline to "
                 f"{folder.path / SUBFOLDER} instead: upload it later with `{self.sync_command(folder)}`")
            self.run = wandb.init(mode="offline", **arguments)
        return self.run.id

    def params(self, recipe: dict[str, Any]) -> None:
        self.run.config.update(recipe, allow_val_change=True)  # a resume may change a setting (--allow-changes)

    def send(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            kind = record.get("kind", "step")
            values = {f"{kind}/{key}": value for key, value in scalars(record).items()}
            if values:
                self.run.log(values, step=int(record["step"]))  # records come in step order: W&B's rule

    def files(self, folder: RunFolder, encoder: bool) -> None:
        import wandb

        report = wandb.Artifact(f"report-{self.run.id}", type="report",
                                description=f"cl-run report, plots, recipe and summary of {folder.path.name}")
        for path in (folder.report, folder.recipe, folder.summary, folder.resumes):
            if path.is_file():
                report.add_file(str(path))
        if folder.plots.is_dir():
            report.add_dir(str(folder.plots), name="plots")
        self.run.log_artifact(report)
        if encoder and folder.encoder.is_file():
            model = wandb.Artifact(f"encoder-{self.run.id}", type="model",
                                   description=f"the encoder (backbone) trained by {folder.path.name}")
            model.add_file(str(folder.encoder))
            self.run.log_artifact(model)

    def close(self, status: str, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)

    def sync_command(self, folder: RunFolder) -> str:
        return f"wandb sync {folder.path / SUBFOLDER}/offline-run-*"
