"""A resume cannot lie: a recipe that changes the training is refused with every difference named, or
with --allow-changes applied from the checkpoint's step and recorded in the run folder and its report."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

import clrun
from clrun.cli import main as cl_run_main
from clrun.run_folder import RunFolder
from clrun.training.checkpointing.policy import Change, changes, recorded, training_changes

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
BASE = ["train.epochs=2", "health.enabled=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> RunFolder:
    """The tiny recipe trained 2 epochs (4 steps each), checkpoint at the end."""
    base = tmp_path_factory.mktemp("trained")
    run = clrun.train(clrun.load_recipe(TINY, [*BASE, f"run.dir={base}", "run.name=r"]))
    return run.folder


@pytest.fixture
def folder(trained, tmp_path) -> RunFolder:
    copy = tmp_path / "r"
    shutil.copytree(trained.path, copy)
    return RunFolder(copy)


def cl_run(capsys, *args) -> tuple[int, str, str]:
    code = cl_run_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def step_lrs(folder: RunFolder) -> dict[int, float]:
    lines = folder.metrics.read_text(encoding="utf-8").splitlines()
    return {r["step"]: r["lr"] for r in map(json.loads, lines) if r["kind"] == "step"}


def test_the_comparison_sorts_changes_into_bookkeeping_observing_and_training():
    saved = {"run": {"dir": "a"}, "train": {"epochs": 2, "threads": 1}, "loss": {"name": "x", "temperature": 0.2},
             "callbacks": [], "views": [{"count": 2}]}
    new = {"run": {"dir": "b"}, "train": {"epochs": 3, "threads": 2}, "loss": {"name": "x", "temperature": 0.1},
           "callbacks": [{"name": "k"}], "views": [{"count": 3}]}
    found = changes(saved, new)
    assert [c.key for c in found] == ["callbacks", "loss.temperature", "run.dir", "train.epochs",
                                      "train.threads", "views.0.count"]
    assert found[0] == Change("callbacks", [], [{"name": "k"}])
    assert [c.key for c in recorded(found)] == ["callbacks", "loss.temperature", "train.epochs", "views.0.count"]
    assert training_changes(found) == [Change("loss.temperature", 0.2, 0.1), Change("views.0.count", 2, 3)]


def test_a_changed_training_is_refused_naming_every_difference(folder, capsys):
    before = folder.metrics.read_text(encoding="utf-8")
    code, _, err = cl_run(capsys, TINY, *BASE, "optimizer.lr=0.01", "loss.temperature=0.5", "--resume", folder.path)
    assert code == 2
    assert err == (
        f"cl-run: error: --resume: {folder.checkpoint}: the recipe differs from the one the run was trained "
        f"with in 2 setting(s) that change the training:\n"
        f"  loss.temperature: 0.2 -> 0.5\n  optimizer.lr: 0.001 -> 0.01\n"
        f"resume with the run's own recipe, or pass --allow-changes to apply them from the checkpoint's step on (they are "
        f"recorded in the run folder and its report)\n"
    )
    assert folder.metrics.read_text(encoding="utf-8") == before and not folder.resumes.exists()


def test_allowed_changes_are_applied_and_recorded(folder, capsys):
    # A schedule appears where there was none, and the learning rate changes: both take effect at step 8.
    schedule = "scheduler={name: clrun/warmup_cosine, warmup_epochs: 0}"
    code, out, err = cl_run(capsys, TINY, "train.epochs=4", "health.enabled=false", "optimizer.lr=0.01", schedule,
                            "--resume", folder.path, "--allow-changes")
    assert code == 0, err
    assert "cl-run: resuming at step 8 with 3 changed setting(s): " in out
    [record] = [json.loads(line) for line in folder.resumes.read_text(encoding="utf-8").splitlines()]
    assert (record["epoch"], record["step"], record["allowed"]) == (2, 8, True)
    assert {c["key"] for c in record["changes"]} == {"optimizer.lr", "scheduler", "train.epochs"}
    saved = folder.read_recipe()
    assert saved["optimizer"]["lr"] == 0.01 and saved["scheduler"]["name"] == "clrun/warmup_cosine"
    # Steps 1-8 ran at 0.001; from step 9 the cosine over 16 steps continues at its step 8 of 16.
    lrs = step_lrs(folder)
    assert [lrs[s] for s in range(1, 9)] == [0.001] * 8
    for s in range(9, 17):
        assert lrs[s] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 16)), rel=1e-6), s
    report = folder.report.read_text(encoding="utf-8")
    assert "## Resumes" in report and "resumed at step 8 (epoch 2) with --allow-changes" in report


def test_a_longer_run_needs_no_flag_but_is_recorded(folder, capsys):
    code, out, err = cl_run(capsys, TINY, "train.epochs=3", "health.enabled=false", "--resume", folder.path)
    assert code == 0, err
    [record] = [json.loads(line) for line in folder.resumes.read_text(encoding="utf-8").splitlines()]
    assert record["changes"] == [{"key": "train.epochs", "was": 2, "now": 3}] and record["allowed"] is False


def test_where_the_run_writes_is_not_a_change(folder, capsys, tmp_path):
    code, _, err = cl_run(capsys, TINY, *BASE, f"run.dir={tmp_path / 'elsewhere'}", "train.threads=2",
                          "--resume", folder.path)
    assert code == 0, err
    assert not folder.resumes.exists()


def test_a_setting_added_since_the_run_started_is_not_a_change(folder, capsys):
    """A run folder from an earlier release has no `params:` section; today it resolves to its default."""
    saved = yaml.safe_load(folder.recipe.read_text(encoding="utf-8"))
    del saved["params"]
    folder.recipe.write_text(yaml.safe_dump(saved), encoding="utf-8")
    code, _, err = cl_run(capsys, TINY, *BASE, "--resume", folder.path)
    assert code == 0, err
    assert not folder.resumes.exists()
