"""One writer per run folder; a resumed run logs every step once and clears what a killed writer left."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import clrun
from clrun.run_folder import RunFolder
from clrun.run_lock import RunLock
from clrun.training import checkpointing
from clrun.training.checkpointing import Checkpointer

pytestmark = pytest.mark.usefixtures("no_report")  # these runs are not about the report

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


class Interrupted(Exception):
    pass


def recipe(tmp_path: Path, epochs: int = 3):
    return clrun.load_recipe(TINY, [f"run.dir={tmp_path}", "run.name=r", f"train.epochs={epochs}",
                                    "train.checkpoint_every=2", "health.enabled=false"])


@pytest.fixture
def crashed(tmp_path, monkeypatch) -> RunFolder:
    """A run killed in epoch 3 after logging it, before checkpointing it (the checkpoint is epoch 2's)."""
    save = Checkpointer.save

    def save_or_crash(checkpointer, *args, **kwargs):
        if checkpointer.run.epoch == 3:
            raise Interrupted
        save(checkpointer, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(Checkpointer, "save", save_or_crash)
        with pytest.raises(Interrupted):
            clrun.train(recipe(tmp_path))
    return RunFolder(tmp_path / "r")


def records(folder: RunFolder, kind: str) -> list[dict]:
    lines = folder.metrics.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_a_resumed_run_logs_every_step_once(crashed, tmp_path):
    assert [r["epoch"] for r in records(crashed, "epoch")] == [1, 2, 3]  # epoch 3 logged, not checkpointed
    assert int(checkpointing.load(crashed.checkpoint)["epoch"]) == 2
    stale = crashed.path / f".{crashed.checkpoint.name}.99999.deadbeef.tmp"
    stale.write_bytes(b"half a checkpoint")

    clrun.train(recipe(tmp_path), resume=crashed.path)
    steps = [r["step"] for r in records(crashed, "step")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 12  # 4 steps an epoch, each once
    assert [r["epoch"] for r in records(crashed, "epoch")] == [1, 2, 3]
    assert [r["step"] for r in records(crashed, "final")] == [12]
    assert not stale.exists() and not crashed.lock.exists()


def test_a_live_holder_keeps_the_folder(crashed, tmp_path):
    crashed.lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "then"}))
    with pytest.raises(clrun.UserError) as error:
        clrun.train(recipe(tmp_path), resume=crashed.path)
    assert str(error.value) == (
        f"{crashed.path} is in use by process {os.getpid()} on {socket.gethostname()} (since then): one run "
        f"folder has one writer. Wait for it to finish; if that process is gone (e.g. on another machine), "
        f"delete {crashed.lock}"
    )
    assert [r["epoch"] for r in records(crashed, "epoch")] == [1, 2, 3]  # nothing was written


def test_a_dead_holders_lock_is_taken_over(crashed, tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    crashed.lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "then"}))
    run = clrun.train(recipe(tmp_path), resume=crashed.path)
    assert run.epoch == 3
    assert (f"cl-run: {crashed.path}: taking over the lock of process {gone.pid} on {socket.gethostname()}, "
            f"which is no longer running") in capsys.readouterr().err


def test_the_lock_is_exclusive_and_released(tmp_path):
    first = RunLock(tmp_path / ".lock")
    with first:
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(clrun.UserError, match="is in use by process"):
            RunLock(tmp_path / ".lock").acquire()
    assert not (tmp_path / ".lock").exists()
