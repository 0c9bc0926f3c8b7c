"""Step-level checkpoints (``train.checkpoint_every_steps``): written in the background mid-epoch with the
place in the epoch and every random stream, so a run that dies mid-epoch resumes bit-exactly from the last
one; a failed background write stops the run with the disk's error and keeps the previous checkpoint. And
the data-stall metric: the share of each epoch spent waiting for data."""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import pytest

import clrun
from clrun.report.markdown import DATA_BOUND
from clrun.run_folder import RunFolder
from clrun.storage import StorageError
from clrun.training import checkpointing, loop
from clrun.training.checkpointing import writes

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


def recipe(tmp_path: Path, name: str, *extra: str):
    return clrun.load_recipe(TINY, [f"run.dir={tmp_path}", f"run.name={name}", "train.epochs=3",
                                    "health.enabled=false", *extra])


def records(folder: RunFolder, kind: str) -> list[dict]:
    return [r for r in map(json.loads, folder.metrics.read_text().splitlines()) if r["kind"] == kind]


def test_a_run_that_dies_mid_epoch_resumes_bit_exactly_from_its_last_step_checkpoint(
        tmp_path, crash_before_step, assert_same_checkpoints, capsys):
    # 4 steps an epoch: steps 3, 6 and 9 are mid-epoch. Started again (a requeued job), the run continues
    # by itself: train.auto_resume.
    settings = ("train.checkpoint_every_steps=3", "train.auto_resume=true")
    folder = RunFolder(crash_before_step(recipe(tmp_path, "crashed", *settings), at=8))
    saved = checkpointing.load(folder.checkpoint)
    assert (saved["epoch"], saved["step"], saved["position"]["batches"]) == (1, 6, 2)

    capsys.readouterr()
    resumed = clrun.train(recipe(tmp_path, "crashed", *settings))
    assert resumed.folder.path == folder.path and sorted(p.name for p in tmp_path.iterdir()) == ["crashed"]
    assert f"cl-run: train.auto_resume is on: resuming {folder.checkpoint}\n" in capsys.readouterr().out
    straight = clrun.train(recipe(tmp_path, "straight"))  # no step checkpoints: they change nothing
    assert_same_checkpoints(resumed.directory, straight.directory)
    assert [r["step"] for r in records(resumed.folder, "step")] == list(range(1, 13))
    assert [r["loss"] for r in records(resumed.folder, "epoch")] == [r["loss"] for r in records(straight.folder, "epoch")]


def test_a_failed_background_write_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real, calls = writes.torch.save, []

    def second_write_finds_the_disk_full(obj, f):
        calls.append((obj["step"], threading.current_thread().name))
        if len(calls) == 2:
            time.sleep(0.2)  # still writing when the training thread moves on
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f)

    monkeypatch.setattr(writes.torch, "save", second_write_finds_the_disk_full)
    with pytest.raises(StorageError) as info:
        clrun.train(recipe(tmp_path, "r", "train.checkpoint_every_steps=1"))
    folder = RunFolder(tmp_path / "r")
    assert str(info.value).endswith("free some space or set run.dir to a larger disk; the previous checkpoint is kept")
    # Written on the writer's thread; the failure surfaced at the next checkpoint, before a third write.
    assert calls == [(1, "clrun-checkpoint"), (2, "clrun-checkpoint")]
    assert int(checkpointing.load(folder.checkpoint)["step"]) == 1
    assert not [p for p in folder.path.iterdir() if p.name.endswith(".tmp")]


def test_the_share_of_time_spent_waiting_for_data_is_recorded_shown_and_explained(tmp_path, monkeypatch, capsys):
    batches, slept = loop.batches, []

    def slow_loader(iterator, dataset):
        for batch in batches(iterator, dataset):
            time.sleep(0.15)  # a loader far slower than the tiny model's step
            slept.append(0.15)
            yield batch

    monkeypatch.setattr(loop, "batches", slow_loader)
    run = clrun.train(recipe(tmp_path, "slow", "train.epochs=1"))
    epoch = records(run.folder, "epoch")[0]
    wait = epoch["data_wait"]
    # Every sleep happens while a step waits for its batch: at least that share of the epoch was waiting
    # (how much more depends on the machine's speed, which varies too much for a tighter bound).
    assert DATA_BOUND < sum(slept) / epoch["epoch_time_s"] <= wait < 1
    assert f"data_wait {wait:.4g}" in capsys.readouterr().out
    assert (f"The steps waited for data {100 * wait:.1f}% of the time (the data loader is the bottleneck: raise "
            f"`data.num_workers`, or read the data from shards: `cl-run shards`).") in run.folder.report.read_text()
