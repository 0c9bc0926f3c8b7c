"""clrun/wandb and clrun/mlflow without a run: what a recipe may not hold, what never reaches a tracker, and
the sender that keeps a failing or hanging tracker away from training (tests/integration/test_tracking.py
runs them for real)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import clrun
from clrun.plugins.callbacks.tracking_common import (
    RecordFeed, Sender, TrackerState, TrackingCallback, ending_of, flat, redact,
)


@pytest.mark.parametrize("name, package", [("clrun/wandb", "wandb"), ("clrun/mlflow", "mlflow")])
def test_a_missing_client_package_is_a_clear_error(name, package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(clrun.UserError) as info:
        clrun.create("callback", name, tracking_uri="http://127.0.0.1:5000") if package == "mlflow" else \
            clrun.create("callback", name)
    assert str(info.value) == f"{name} needs the {package} package: pip install 'cl-run[{package}]'"


def test_mlflow_refuses_a_password_in_the_recipe_and_names_a_missing_server(monkeypatch):
    pytest.importorskip("mlflow")
    with pytest.raises(clrun.ComponentError) as info:
        clrun.create("callback", "clrun/mlflow", tracking_uri="https://me:hunter2@mlflow.example:5000")
    assert info.value.argument == "tracking_uri" and "hunter2" not in str(info.value)
    fix = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment"
    assert fix in str(info.value)

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(clrun.ComponentError, match="no tracking server: set tracking_uri .* or MLFLOW_TRACKING_URI"):
        clrun.create("callback", "clrun/mlflow")
    # From the environment, a password is fine, but it is never shown or stored.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://me:hunter2@mlflow.example:5000")
    logger = clrun.create("callback", "clrun/mlflow")
    assert logger.tracker(None).where == "https://mlflow.example:5000"
    # A relative file store is the same store after a resume from another working directory.
    relative = clrun.create("callback", "clrun/mlflow", tracking_uri="mlruns")
    assert relative.tracking_uri == (Path.cwd() / "mlruns").as_uri()


def test_credentials_of_the_environment_are_redacted(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k3y-0123456789")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://me:pa55word@mlflow.example")
    recipe = {"run": {"name": "k3y-0123456789"}, "tags": ["x hf_abcdef y", 3, "pa55word"]}
    assert redact(recipe) == {"run": {"name": "<WANDB_API_KEY>"},
                              "tags": ["x <HF_TOKEN> y", 3, "<MLFLOW_TRACKING_URI>"]}
    assert flat({"optimizer": {"lr": 0.1}, "views": [{"count": 2}], "tags": ["a"], "init": None}) == {
        "optimizer.lr": 0.1, "views.0.count": 2, "tags": ["a"], "init": None}


def test_the_state_says_which_records_the_tracker_holds_and_the_feed_reads_whole_records(tmp_path):
    state = TrackerState(run_id="r", where="w")
    for record in ({"kind": "step", "step": 4}, {"kind": "epoch", "epoch": 1, "step": 4}, {"kind": "final", "step": 4}):
        assert not state.holds(record)
        state.add(record)
        assert state.holds(record)
    assert not state.holds({"kind": "step", "step": 5}) and not state.holds({"kind": "final", "step": 8})
    state.save(tmp_path / "t" / "cl-run.json")
    assert TrackerState.load(tmp_path / "t" / "cl-run.json") == state
    assert TrackerState.load(tmp_path / "missing.json") == TrackerState()

    metrics = tmp_path / "metrics.jsonl"
    feed = RecordFeed(metrics)
    assert feed.new() == []
    metrics.write_text('{"kind": "step", "step": 1}\n{"kind": "st')  # a record being written
    assert feed.new() == [{"kind": "step", "step": 1}]
    with open(metrics, "a") as f:
        f.write('ep", "step": 2}\n')
    assert feed.new() == [{"kind": "step", "step": 2}]


class FakeTracker:
    """Fails or hangs where it is told to; records what it got."""

    label, where, chunk = "test/tracker", "nowhere", 3

    def __init__(self, fail: bool = False, hang: threading.Event | None = None) -> None:
        self.fail, self.hang, self.sent, self.closed = fail, hang, [], None

    def open(self, state, folder):
        if self.hang is not None:
            self.hang.wait(10)
        if self.fail:
            raise ConnectionError("connection refused")
        return state.run_id or "run-1"

    def params(self, recipe):
        self.recipe = recipe

    def send(self, records):
        self.sent += records

    def files(self, folder, encoder):
        pass

    def close(self, status, exit_code):
        self.closed = status

    def sync_command(self, folder):
        return f"sync {folder.path}"


def folder_with_records(tmp_path: Path, steps: int) -> clrun.RunFolder:
    folder = clrun.RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.recipe.write_text("seed: 0\n")
    lines = [{"kind": "step", "step": s, "epoch": 1, "loss": 1.0 / s} for s in range(1, steps + 1)]
    folder.metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_the_sender_sends_every_nth_step_and_a_resumed_run_only_what_the_tracker_lacks(tmp_path):
    folder = folder_with_records(tmp_path, 7)
    tracker = FakeTracker()
    sender = Sender(tracker, folder, "fake", every_steps=2)
    sender.sync(("FINISHED", 0))
    assert [r["step"] for r in tracker.sent] == [2, 4, 6] and tracker.closed == "FINISHED"
    assert tracker.recipe == {"seed": 0}
    assert TrackerState.load(folder.path / "fake" / "cl-run.json") == TrackerState("run-1", "nowhere", 7, 0, -1)

    with open(folder.metrics, "a") as f:
        f.write(json.dumps({"kind": "step", "step": 8, "loss": 0.1}) + "\n")
    again = FakeTracker()
    Sender(again, folder, "fake", every_steps=2).sync()  # a resumed run: the same run, only what is new
    assert [r["step"] for r in again.sent] == [8]


def test_a_failing_or_hanging_tracker_is_a_warning_and_the_end_waits_at_most_timeout_s(tmp_path, capsys):
    folder = folder_with_records(tmp_path, 3)
    sender = Sender(FakeTracker(fail=True), folder, "fake")
    sender.start()
    sender.finish()
    assert sender.wait(5) and sender.done
    err = capsys.readouterr().err
    assert "warning: test/tracker: could not reach nowhere (ConnectionError: connection refused); training" in err
    assert f"or now with `sync {folder.path}`" in err

    release = threading.Event()
    sender = Sender(FakeTracker(hang=release), folder, "fake")
    sender.start()
    sender.finish()
    start = time.monotonic()
    assert not sender.wait(0.3)
    assert time.monotonic() - start < 2
    assert "warning: test/tracker: nowhere did not answer within 0.3 s" in capsys.readouterr().err
    release.set()


def test_a_signal_or_ctrl_c_ends_the_tracker_run_killed_and_an_error_failed():
    class Stopped(Exception):  # clrun's own has the signal and the shell's exit code
        signum, exit_code = 15, 143

    assert ending_of(Stopped()) == ("KILLED", 143)
    assert ending_of(KeyboardInterrupt()) == ("KILLED", 130)
    assert ending_of(RuntimeError("boom")) == ("FAILED", 1)


def test_only_rank_0_tracks(tmp_path, monkeypatch):
    from clrun import distributed

    callback = TrackingCallback(every_steps=1, log_encoder=False, timeout_s=1)
    callback.tracker = lambda run: pytest.fail("a tracker was built on another rank")
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    callback.clrun_run_start(run=SimpleNamespace(folder=folder_with_records(tmp_path, 1)))
    assert callback.sender is None
