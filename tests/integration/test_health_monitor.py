"""The health monitor and collapse alarm in real (tiny) trainings: what they log, that they leave the
training untouched, and that halting keeps the last healthy checkpoint and names the signal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import clrun
from clrun import TrainingHalted
from clrun.health.alarm import CollapseAlarm
from clrun.health.monitor import HealthMonitor
from clrun.recipe.schema import AlarmSection

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
SIGNALS = ("alignment", "uniformity", "std_sqrt_d", "rankme", "pos_cosine", "neg_cosine")
HEALTHY = {"std_sqrt_d_projector": 0.9, "rankme_projector": 40.0, "uniformity_projector": -3.0}
COLLAPSED = {"std_sqrt_d_projector": 0.01, "rankme_projector": 1.2, "uniformity_projector": -0.001}
# Runs whose report is not under test skip its plots (the halting test reads the report).
without_report = pytest.mark.usefixtures("no_report")


def train(tmp_path: Path, *overrides: str, name: str = "run"):
    recipe = clrun.load_recipe(TINY, [f"run.dir={tmp_path}", f"run.name={name}", *overrides])
    return clrun.train(recipe)


def records(folder: Path, file: str) -> list[dict]:
    return [json.loads(line) for line in (folder / file).read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- the alarm's bookkeeping


def test_alarm_fires_after_patience_consecutive_checks_and_names_the_signal():
    alarm = CollapseAlarm(AlarmSection(patience=2))
    assert alarm.observe(HEALTHY, 1) == ([], [])
    now, fired = alarm.observe({**HEALTHY, "std_sqrt_d_projector": 0.05}, 2)
    assert [s.metric for s in now] == ["std_sqrt_d"] and fired == []
    now, fired = alarm.observe({**HEALTHY, "std_sqrt_d_projector": 0.02}, 3)
    assert [s.metric for s in fired] == ["std_sqrt_d"]
    assert alarm.message(fired, 3) == (
        "collapse alarm at epoch 3: projector std_sqrt_d = 0.02 < 0.1 for 2 checks in a row (since epoch 2)"
    )


def test_a_healthy_check_resets_the_count():
    alarm = CollapseAlarm(AlarmSection(patience=2))
    alarm.observe(COLLAPSED, 1)
    alarm.observe(HEALTHY, 2)
    assert alarm.observe(COLLAPSED, 3)[1] == []
    assert {s.metric for s in alarm.observe(COLLAPSED, 4)[1]} == {"std_sqrt_d", "rankme", "uniformity"}


def test_nan_counts_as_beyond_and_off_never_fires():
    nan = {**HEALTHY, "rankme_projector": float("nan")}
    assert [s.metric for s in CollapseAlarm(AlarmSection(patience=1)).observe(nan, 1)[1]] == ["rankme"]
    assert CollapseAlarm(AlarmSection(action="off", patience=1)).observe(COLLAPSED, 1) == ([], [])


def test_the_backbone_branch_can_be_watched():
    metrics = {"std_sqrt_d_backbone": 0.01, "rankme_backbone": 30.0, "uniformity_backbone": -2.0, **COLLAPSED}
    fired = CollapseAlarm(AlarmSection(patience=1, branch="backbone")).observe(metrics, 1)[1]
    assert [s.metric for s in fired] == ["std_sqrt_d"]


# ---------------------------------------------------------------- the monitor in a run


@without_report
def test_every_epoch_logs_both_branches_and_the_summary_keeps_the_last_check(tmp_path):
    run = train(tmp_path, "train.epochs=2")
    epochs = [r for r in records(run.directory, "metrics.jsonl") if r["kind"] == "epoch"]
    checks = records(run.directory, "health.jsonl")
    assert [c["epoch"] for c in checks] == [1, 2]
    for branch in ("backbone", "projector"):
        for signal in SIGNALS:
            key = f"{signal}_{branch}"
            assert [e[key] for e in epochs] == [c["metrics"][key] for c in checks]
            assert run.summary[key] == checks[-1]["metrics"][key]
        hist = checks[-1]["histograms"][branch]
        assert len(hist["edges"]) == 41 and len(hist["positive"]) == len(hist["negative"]) == 40
        assert sum(hist["positive"]) == 64  # one positive pair per image of the 64-image sample
        assert sum(hist["negative"]) == 64 * 63
    # a loss's own batch metrics keep their names: the monitor's are suffixed
    assert "pos_cosine" in epochs[0] and epochs[0]["pos_cosine"] != epochs[0]["pos_cosine_backbone"]
    assert checks[-1]["alarm"] == {"branch": "projector", "signals": [], "fired": None}


@without_report
def test_the_monitor_changes_nothing_in_the_training(tmp_path):
    with_monitor = train(tmp_path, "train.epochs=2", "health.every=1", name="monitored")
    without = train(tmp_path, "train.epochs=2", "health.enabled=false", name="unmonitored")
    a, b = with_monitor.parts.network.state_dict(), without.parts.network.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # BatchNorm buffers included
    losses = [[r["loss"] for r in records(r.directory, "metrics.jsonl") if r["kind"] == "step"] for r in (with_monitor, without)]
    assert losses[0] == losses[1]
    assert not (without.directory / "health.jsonl").exists()


@without_report
def test_every_n_epochs_and_always_the_last(tmp_path):
    run = train(tmp_path, "train.epochs=3", "health.every=2")
    assert [c["epoch"] for c in records(run.directory, "health.jsonl")] == [2, 3]


def collapse_from_second_check(monkeypatch):
    """The real measurement, with the projector's spread forced to 0 from the second check on."""
    measure, calls = HealthMonitor.measure, []

    def fake(self, run):
        metrics, hists = measure(self, run)
        calls.append(run.epoch)
        if len(calls) >= 2:
            metrics["std_sqrt_d_projector"] = 0.0
        return metrics, hists

    monkeypatch.setattr(HealthMonitor, "measure", fake)


def test_halt_keeps_the_last_healthy_checkpoint_and_names_the_signal(tmp_path, monkeypatch):
    collapse_from_second_check(monkeypatch)
    with pytest.raises(TrainingHalted) as halted:
        train(tmp_path, "train.epochs=5", "health.alarm.action=halt")
    folder = tmp_path / "run"
    message = str(halted.value)
    assert message.startswith("collapse alarm at epoch 3: projector std_sqrt_d = 0 < 0.1 for 2 checks in a row (since epoch 2); ")
    assert f"the last healthy checkpoint (epoch 1) is {folder / 'checkpoint.pt'}" in message
    # epoch 2 looked collapsed, so its checkpoint was held back: the file on disk is epoch 1's
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"] == 1
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["halted"] == message and summary["epoch"] == 3
    assert records(folder, "health.jsonl")[-1]["alarm"]["fired"] == message.split("; the last")[0]
    assert "halted" in (folder / "report.md").read_text(encoding="utf-8").lower()
    assert not (folder / "encoder.safetensors").exists()  # only a finished run exports its encoder


@without_report
def test_halt_through_the_command_line_exits_1(tmp_path, monkeypatch, capsys, registry):
    from clrun import plugin_manager
    from clrun.cli import main

    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    collapse_from_second_check(monkeypatch)
    code = main([str(TINY), f"run.dir={tmp_path}", "train.epochs=4", "health.alarm.action=halt", "health.alarm.patience=1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "cl-run: training halted: collapse alarm at epoch 2: projector std_sqrt_d = 0 < 0.1 for 1 checks" in err


@without_report
def test_warn_prints_and_trains_to_the_end(tmp_path, monkeypatch, capsys):
    collapse_from_second_check(monkeypatch)
    run = train(tmp_path, "train.epochs=3", "health.alarm.patience=1")
    out = capsys.readouterr().out
    assert run.epoch == 3
    assert "warning: collapse alarm at epoch 2: projector std_sqrt_d = 0 < 0.1" in out
    assert torch.load(run.directory / "checkpoint.pt", weights_only=True)["epoch"] == 3
