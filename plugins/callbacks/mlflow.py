"""MLflow tracking of a run, with the official client (``mlflow-skinny`` is enough): ``clrun/mlflow``.

A run folder whose records did not all reach the server is sent later by
``python -m clrun.plugins.callbacks.mlflow RUN_FOLDER`` (or by resuming the run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

from clrun import ComponentError, Range, RunFolder, UserError, checked
from clrun.plugins.callbacks.tracking_common import (
    STATE_FILE, RecordFeed, Sender, TrackerState, TrackingCallback, flat, redact, refuse_credentials, scalars,
)

NAME = "clrun/mlflow"
SUBFOLDER = "mlflow"  # the callback's state file in the run folder
MISSING = f"{NAME} needs the mlflow package: pip install 'cl-run[mlflow]'"
CREDENTIALS_ENV = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
# MLflow's limits (mlflow.utils.validation): one log_batch holds at most 1000 metrics and 100 params.
MAX_METRICS, MAX_PARAMS, MAX_PARAM_LENGTH = 1000, 100, 6000
UNSAFE = re.compile(r"[^\w./\- :]")  # what MLflow refuses in a metric or param key
# MLflow's HTTP client retries a failed request for minutes by default (7 retries, the wait doubling from
# 2 s). It reads these variables at every request: the callback sets them for its requests, except those
# the user set before cl-run was imported.
HTTP_SETTINGS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
USER_SET = frozenset(name for name in HTTP_SETTINGS if name in os.environ)


def _display(uri: str) -> str:
    """``uri`` without a password (one in MLFLOW_TRACKING_URI must not reach a log or the run folder)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()


def _local(uri: str) -> str:
    """A file store given as a path, made an absolute ``file:`` URI: the same store after a resume from
    another working directory."""
    return uri if len(urllib.parse.urlsplit(uri).scheme) > 1 else Path(uri).resolve().as_uri()

@checked
class MlflowLogger(TrackingCallback):
    """Logs the run to MLflow: the resolved recipe as the run's params (dotted keys, ``optimizer.lr``),
    every step, epoch and final record of the run's metrics file (``RunFolder.metrics``) as metrics (``step/<metric>``,
    ``epoch/<metric>``, ``final/<metric>``, at the optimizer step), and at the end the report, its plots,
    the recipe and the summary as artifacts (the encoder too with ``log_encoder``).

    The MLflow run is named after the run folder and its id is kept there (``mlflow/cl-run.json``): a
    ``--resume``d or requeued run continues the same MLflow run and sends each step once. A server that is
    down or slow is a warning, never a stalled run: requests go from a thread of their own, each bounded
    by ``timeout_s`` without MLflow's minutes of retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
    ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are set unless the environment sets them); what did not reach the server
    stays in the run folder and is sent on the next try, on resume, or by
    ``python -m clrun.plugins.callbacks.mlflow RUN_FOLDER``. Credentials come from the environment
    (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` or ``_TOKEN``), never from the recipe; rank 0 alone logs.

    tracking_uri: the server (``http://HOST:5000``) or a local store (``sqlite:///PATH``, ``file:PATH``);
                  default: ``MLFLOW_TRACKING_URI``
    experiment:   the MLflow experiment (created when missing)
    every_steps:  log step records every this many steps (1: all of them, as the metrics file)
    log_encoder:  also upload the encoder file (``RunFolder.encoder``) at the end
    timeout_s:    the longest one request may take, and the end of the run waits for MLflow
    """

    subfolder = SUBFOLDER

    def __init__(self, tracking_uri: Optional[str] = None, experiment: str = "cl-run",
                 every_steps: Annotated[int, Range(min=1)] = 1, log_encoder: bool = False,
                 timeout_s: Annotated[float, Range(min=0, exclusive_min=True)] = 30.0) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise UserError(MISSING)
        refuse_credentials(NAME, "tracking_uri", tracking_uri, CREDENTIALS_ENV)
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ComponentError(f"{NAME}: no tracking server: set tracking_uri (http://HOST:5000, sqlite:///PATH or "
                                 f"file:PATH) in the recipe, or MLFLOW_TRACKING_URI in the environment",
                                 argument="tracking_uri")
        super().__init__(every_steps, log_encoder, timeout_s)
        self.tracking_uri, self.experiment = _local(uri), experiment

    def tracker(self, run: Any) -> "MlflowTracker":
        return MlflowTracker(self.tracking_uri, self.experiment, self.timeout_s)


class MlflowTracker:
    """The MLflow side of a ``Sender`` (``clrun.plugins.callbacks.tracking_common``), on the sender's thread."""

    label = NAME
    chunk = MAX_METRICS

    def __init__(self, uri: str, experiment: str, timeout_s: float) -> None:
        self.uri, self.experiment, self.timeout_s = uri, experiment, timeout_s
        self.where = _display(uri)
        self.client = self.run_id = None
        self.logged: dict[str, str] = {}  # the params the MLflow run holds (a resumed run's)

    def open(self, state: TrackerState, folder: RunFolder) -> str:
        bounded = dict(zip(HTTP_SETTINGS, ("0", str(math.ceil(self.timeout_s)))))  # no retries; timeout_s each
        os.environ.update({name: value for name, value in bounded.items() if name not in USER_SET})
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if state.run_id:
            try:
                found = self.client.get_run(state.run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                found = None
            if found is not None and found.info.lifecycle_stage != "deleted":
                self.run_id, self.logged = state.run_id, dict(found.data.params)
                if found.info.status != "RUNNING":
                    self.client.update_run(self.run_id, status="RUNNING")
                return self.run_id
        experiment = self.client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=folder.path.name,
                                     tags={"clrun.run_folder": str(folder.path.resolve())})
        self.run_id = run.info.run_id
        return self.run_id

    def params(self, recipe: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow never changes a param: a resumed run's changed settings are in its resumes artifact (RunFolder.resumes).
        params = [Param(key, _text(value)[:MAX_PARAM_LENGTH]) for key, value in
                  ((UNSAFE.sub("_", k), v) for k, v in flat(recipe).items()) if key not in self.logged]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS])

    def send(self, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(UNSAFE.sub("_", f"{record.get('kind', 'step')}/{key}"), value, now, int(record["step"]))
                   for record in records for key, value in scalars(record).items()]
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS])

    def files(self, folder: RunFolder, encoder: bool) -> None:
        for path in (folder.report, folder.recipe, folder.summary, folder.resumes):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        if folder.plots.is_dir():
            self.client.log_artifacts(self.run_id, str(folder.plots), "plots")
        if encoder and folder.encoder.is_file():
            self.client.log_artifact(self.run_id, str(folder.encoder), "encoder")

    def close(self, status: str, exit_code: int) -> None:
        self.client.set_terminated(self.run_id, status)

    def sync_command(self, folder: RunFolder) -> str:
        return f"python -m clrun.plugins.callbacks.mlflow {folder.path}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def sync(folder: str | Path, tracking_uri: str | None = None, experiment: str = "cl-run") -> str:
    """Send what a run folder's MLflow run does not hold yet (the records, then the files), on this thread;
    ``tracking_uri``: another server than the run's (a new MLflow run there gets everything). The run ends
    FINISHED when the folder's last record is its final one (FAILED when it was halted). Returns the run id."""
    folder = RunFolder(folder)
    if not folder.is_run():
        raise UserError(f"{folder.path} is not a run folder (it has no {folder.recipe.name})")
    saved = TrackerState.load(folder.path / SUBFOLDER / STATE_FILE)
    uri = tracking_uri or saved.where or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError(f"{folder.path}: no MLflow run recorded there; give the server with --tracking-uri")
    sender = Sender(MlflowTracker(_local(uri), experiment, 30.0), folder, SUBFOLDER)
    records = RecordFeed(folder.metrics).new()
    last = records[-1] if records else {}
    status = None if last.get("kind") != "final" else ("FAILED" if "halted" in last else "FINISHED")
    sender.sync((status, 0))
    return sender.state.run_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clrun.plugins.callbacks.mlflow",
                                     description="Send a run folder's records and files that its MLflow run lacks.")
    parser.add_argument("run_folder")
    parser.add_argument("--tracking-uri", help="another server than the one the run used")
    parser.add_argument("--experiment", default="cl-run", help="for a new MLflow run (default: cl-run)")
    args = parser.parse_args(argv)
    try:
        run_id = sync(args.run_folder, args.tracking_uri, args.experiment)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the server's answer, or none: one line, the records stay where they are
        print(f"error: {redact(f'{type(exc).__name__}: {exc}')}; nothing was lost, try again later", file=sys.stderr)
        return 1
    print(f"{args.run_folder}: MLflow run {run_id} holds every record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
