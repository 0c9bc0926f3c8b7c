"""What ``clrun/wandb`` and ``clrun/mlflow`` share: a tracker fed from the run folder by a thread of its own.

Why the run folder is the source: its metrics file (``RunFolder.metrics``) gets every step, epoch and final record, written by the
run before these callbacks' hooks end (they wrap every other callback's), so a tracker gets exactly those
records. The same file is the local copy a tracker catches up from when it could not be reached: later in
the run, on ``--resume`` or a requeue, or by a sync command. What the tracker already holds is remembered in
the run folder (``TrackerState``), so a resumed run continues the same tracker run and sends no step twice.

Why a thread: a tracking server that is down or slow must never stall or fail training. The training
thread only wakes the ``Sender``; the sender reads the new records and sends them. A failure is one warning,
after which the sender waits ``RETRY_S`` before it tries again; the end of the run waits for it at most the
callback's ``timeout_s``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Protocol

from clrun import ComponentError, RunFolder, hookimpl, name_of

# Environment variables that hold secrets: never written to the recipe, a log, a config or an artifact.
CREDENTIALS = ("WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
               "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "DATABRICKS_TOKEN")
RETRY_S = 60.0  # after a failure, how long the sender leaves the tracker alone before trying again
STATE_FILE = "cl-run.json"  # in the tracker's folder inside the run folder


# Addresses whose password part (``https://user:secret@host``) is a credential too.
ADDRESSES = ("MLFLOW_TRACKING_URI", "WANDB_BASE_URL")


def secrets() -> dict[str, str]:
    """The environment's credentials by name; a one-letter "secret" would blank out half a recipe."""
    found = {name: os.environ.get(name, "") for name in CREDENTIALS}
    for name in ADDRESSES:
        found[name] = urllib.parse.urlsplit(os.environ.get(name, "")).password or ""
    return {name: value for name, value in found.items() if len(value) >= 4}


def redact(value: Any) -> Any:
    """``value`` (text, or a recipe's nested dicts and lists) with every credential of the environment
    replaced by ``<NAME>``: a secret that found its way into a recipe never reaches a tracker or a log."""
    if isinstance(value, str):
        for name, secret in secrets().items():
            value = value.replace(secret, f"<{name}>")
        return value
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def refuse_credentials(owner: str, key: str, uri: str | None, env: str) -> None:
    """A URI in a recipe must not carry a password (``https://user:secret@host``): recipes are copied into
    run folders, trackers and reports. ``env`` names where the credentials go instead."""
    if uri and urllib.parse.urlsplit(uri).password is not None:
        raise ComponentError(f"{owner}: {key} holds a password (user:password@); recipes are copied into run "
                             f"folders and trackers: give the host alone and set {env} in the environment",
                             argument=key)


def warn(message: str) -> None:
    print(f"warning: {redact(message)}", file=sys.stderr, flush=True)


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """A metrics record's finite numbers (``step`` and ``kind`` are where it goes, not what it says)."""
    return {k: float(v) for k, v in record.items()
            if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A recipe's nested sections as dotted keys (``optimizer.lr``, ``views.0.transforms.1.name``)."""
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: value}


@dataclass
class TrackerState:
    """What a tracker holds of one run folder: its run (``run_id`` at ``where``, a tracking URI or a
    project) and how far the records went. Another ``where`` than the saved one starts a new tracker run
    that gets every record again."""

    run_id: str | None = None
    where: str | None = None
    step: int = 0  # step records up to this step were sent (or skipped by every_steps)
    epoch: int = 0  # epoch records up to this epoch
    final: int = -1  # final records up to this step (a resumed, finished run has one per segment)

    def holds(self, record: Mapping[str, Any]) -> bool:
        kind = record.get("kind")
        if kind == "epoch":
            return int(record.get("epoch", 0)) <= self.epoch
        if kind == "final":
            return int(record.get("step", 0)) <= self.final
        return int(record.get("step", 0)) <= self.step

    def add(self, record: Mapping[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "epoch":
            self.epoch = max(self.epoch, int(record.get("epoch", 0)))
        elif kind == "final":
            self.final = max(self.final, int(record.get("step", 0)))
        else:
            self.step = max(self.step, int(record.get("step", 0)))

    @classmethod
    def load(cls, path: Path) -> "TrackerState":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}) if isinstance(data, dict) else cls()

    def save(self, path: Path) -> None:
        """Written whole or not at all (a crash leaves the previous state)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)


class RecordFeed:
    """The run folder's metrics file, read as it grows: only whole new records (a line being written is
    left for the next read)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""

    def new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash
            if isinstance(record, dict):
                records.append(record)
        return records


class Tracker(Protocol):
    """One tracking service, called from one thread at a time: the sender's (``open`` from the training
    thread first where the callback says so). Every method may raise: the sender turns a failure into a
    warning and tries again later."""

    label: str  # the callback's name, for messages
    where: str  # the tracking URI or project: a TrackerState for another one is not this tracker's
    chunk: int  # how many metrics one send may hold

    def open(self, state: TrackerState, folder: RunFolder) -> str:
        """Start the tracker's run, or continue ``state.run_id``; return the run's id."""

    def params(self, recipe: dict[str, Any]) -> None:
        """Log the resolved recipe (already redacted) as the run's configuration, at every start of the run."""

    def send(self, records: list[dict[str, Any]]) -> None:
        """Log metrics records as the metrics file holds them (``kind``, ``step``, values)."""

    def files(self, folder: RunFolder, encoder: bool) -> None:
        """Upload the run's hand-over files that exist: report, plots, recipe (and the encoder)."""

    def close(self, status: str, exit_code: int) -> None:
        """End the tracker's run: ``status`` FINISHED, FAILED or KILLED."""

    def sync_command(self, folder: RunFolder) -> str:
        """The command that sends a run folder's records later."""


class Sender:
    """Feeds a tracker from the run folder on a daemon thread: ``wake()`` after new records, ``finish()``
    at the end of the run, then ``wait(timeout_s)``. ``sync()`` does the same work on the calling thread."""

    def __init__(self, tracker: Tracker, folder: RunFolder, subfolder: str, every_steps: int = 1,
                 encoder: bool = False) -> None:
        self.tracker, self.folder, self.every_steps, self.encoder = tracker, folder, every_steps, encoder
        self.state_path = folder.path / subfolder / STATE_FILE
        state = TrackerState.load(self.state_path)
        self.state = state if state.where == tracker.where else TrackerState(where=tracker.where)
        self.feed, self.pending = RecordFeed(folder.metrics), []
        self.opened = self.configured = self.warned = False
        self.failed_at: float | None = None
        self.ending: tuple[str | None, int] | None = None
        self.done = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{tracker.label} sender", daemon=True)

    # -- the training thread's side ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def finish(self, status: str = "FINISHED", exit_code: int = 0) -> None:
        self.ending = (status, exit_code)
        self.wake()

    def wait(self, timeout_s: float) -> bool:
        """Whether the sender finished within ``timeout_s``; if not, it is left to finish on its own (a
        daemon thread: it never keeps the process alive) and a warning says where the records are."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            warn(f"{self.tracker.label}: {self.tracker.where} did not answer within {timeout_s:g} s; training "
                 f"ended without waiting longer. {self.catch_up_hint()}")
            return False
        return True

    # -- the sender's thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            ending = self.ending
            if self.failed_at is None or time.monotonic() - self.failed_at >= RETRY_S:
                self._attempt(ending)
            if ending is not None:
                if self.failed_at is not None:
                    warn(f"{self.tracker.label}: the run ended while {self.tracker.where} could not be reached. "
                         f"{self.catch_up_hint()}")
                self.done = True
                return

    def _attempt(self, ending: tuple[str | None, int] | None) -> None:
        try:
            self.sync(ending)
        except Exception as exc:  # anything a client raises: the run goes on, the records wait in the folder
            self.failed_at = time.monotonic()
            if not self.warned:
                self.warned = True
                warn(f"{self.tracker.label}: could not reach {self.tracker.where} ({type(exc).__name__}: {exc}); "
                     f"training goes on and tries again in {RETRY_S:g} s. {self.catch_up_hint()}")
        else:
            if self.warned and self.failed_at is not None:
                print(f"{self.tracker.label}: {self.tracker.where} answers again; caught up to step "
                      f"{self.state.step}", file=sys.stderr, flush=True)
            self.failed_at = None

    def open(self) -> None:
        """Start or continue the tracker's run (once; ``sync`` calls it, a tracker that must start on the
        training thread calls it there first)."""
        if self.opened:
            return
        run_id = self.tracker.open(self.state, self.folder)
        if run_id != self.state.run_id:  # a new tracker run (the saved one is gone): it gets every record
            self.state = TrackerState(run_id=run_id, where=self.tracker.where)
            self.feed, self.pending = RecordFeed(self.folder.metrics), []
        self.opened = True
        self._save()

    def sync(self, ending: tuple[str | None, int] | None = None) -> None:
        """Send everything the tracker does not hold yet; with ``ending`` (status, exit code), also the
        run's files, and end the tracker's run with that status (None: leave it as it is)."""
        self.open()
        if not self.configured:  # at every start: a resumed run's recipe may have changed (--allow-changes)
            self.tracker.params(redact(self.folder.read_recipe() or {}))
            self.configured = True
        self.pending += [r for r in self.feed.new() if not self.state.holds(r)]
        while self.pending:
            chunk = self._next_chunk()
            wanted = [r for r in chunk if self._wanted(r)]
            if wanted:
                self.tracker.send(wanted)
            for record in chunk:
                self.state.add(record)
            del self.pending[:len(chunk)]
            self._save()
        if ending is not None:
            self.tracker.files(self.folder, self.encoder)
            status, exit_code = ending
            if status is not None:
                self.tracker.close(status, exit_code)

    def _wanted(self, record: Mapping[str, Any]) -> bool:
        return record.get("kind") != "step" or int(record.get("step", 0)) % self.every_steps == 0

    def _next_chunk(self) -> list[dict[str, Any]]:
        """The first pending records holding at most ``tracker.chunk`` metrics (at least one record)."""
        size, end = 0, 0
        for end, record in enumerate(self.pending, 1):
            size += len(record)
            if size > self.tracker.chunk and end > 1:
                end -= 1
                break
        return self.pending[:end]

    def _save(self) -> None:
        try:
            self.state.save(self.state_path)
        except OSError as exc:  # a full disk stops the run at its next checkpoint, not here
            warn(f"{self.tracker.label}: could not write {self.state_path} ({exc})")

    def catch_up_hint(self) -> str:
        return (f"What it has not got is in {self.folder.path}, and is sent when the run is resumed, or now "
                f"with `{self.tracker.sync_command(self.folder)}`.")


def ending_of(error: BaseException) -> tuple[str, int]:
    """The tracker status and exit code of a run that stopped on ``error``: a signal or Ctrl-C (a requeue,
    a cancelled job) is KILLED, anything else FAILED."""
    if isinstance(error, KeyboardInterrupt) or hasattr(error, "signum"):
        return "KILLED", int(getattr(error, "exit_code", 130))
    return "FAILED", 1


class TrackingCallback:
    """The run hooks of a tracking callback: a ``Sender`` per run on rank 0, woken after every step and
    epoch, finished at the end. Its hooks wrap every other callback's (``wrapper=True``, as
    ``clrun/tensorboard``'s), so the records, the report and the encoder are written before it reads them.
    Nothing here raises into the run: a tracker's trouble is a warning."""

    subfolder = ""  # the tracker's folder in the run folder (its state file)
    open_on_training_thread = False  # whether the tracker's run must start before training does

    def __init__(self, every_steps: int, log_encoder: bool, timeout_s: float) -> None:
        self.every_steps, self.log_encoder, self.timeout_s = every_steps, log_encoder, timeout_s
        self.sender: Sender | None = None

    def tracker(self, run: Any) -> Tracker:
        raise NotImplementedError

    def clrun_run_start(self, run: Any) -> None:
        from clrun import distributed  # imports torch: only once a run starts

        if run.folder is None or not distributed.is_main():
            return  # a run that writes nothing (`cl-run check`), or not rank 0
        try:
            self.sender = Sender(self.tracker(run), run.folder, self.subfolder, self.every_steps, self.log_encoder)
            if self.open_on_training_thread:
                self.sender.open()
            self.sender.start()
        except Exception as exc:
            warn(f"{name_of(self)}: not tracking this run ({type(exc).__name__}: {exc})")
            self.sender = None

    @hookimpl(wrapper=True)
    def clrun_step_end(self, run: Any, step: int, metrics: dict[str, float]):
        try:
            return (yield)
        finally:
            if self.sender is not None:
                self.sender.wake()

    @hookimpl(wrapper=True)
    def clrun_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]):
        try:
            return (yield)
        finally:
            if self.sender is not None:
                self.sender.wake()

    @hookimpl(wrapper=True)
    def clrun_run_end(self, run: Any, metrics: dict[str, float]):
        result = yield  # an error here goes on to clrun_run_error, which ends the tracker's run
        self._end("FINISHED", 0)
        return result

    @hookimpl(wrapper=True)
    def clrun_run_error(self, run: Any, error: BaseException):
        try:
            return (yield)
        finally:
            self._end(*ending_of(error))

    def _end(self, status: str, exit_code: int) -> None:
        sender, self.sender = self.sender, None
        if sender is not None:
            sender.finish(status, exit_code)
            sender.wait(self.timeout_s)
