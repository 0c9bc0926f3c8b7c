"""Divergence is caught: the loss alarm flags an epoch loss that explodes or stops changing (warn or
halt, naming the signal), and a temperature that would make a loss explode is refused when the recipe
is checked, before any training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from clrun import ComponentError, load_recipe
from clrun.recipe import RecipeError
from clrun.health.loss_alarm import LossAlarm
from clrun.recipe.schema import AlarmSection

TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"
# Two steps an epoch and a small health sample: a few tenths of a second per epoch.
SMALL = ["data.dataset.num_images=32", "health.samples=32"]
DIVERGED = ("The loss diverged: lower optimizer.lr, set train.grad_clip, or check the loss's own settings "
            "(a temperature, a weight)")
CONSTANT = ("A constant loss means the network stopped learning: dead units after a too high optimizer.lr, "
            "a zero learning rate, or frozen weights")
WARN_ONLY = "To only be warned, set health.alarm.action=warn"


# ---------------------------------------------------------------- the alarm's bookkeeping


@pytest.mark.parametrize("settings, losses, expected", [
    ({}, [3.0, 2.7, 2.2, 2.0, 1.8], {}),
    ({}, [2e7, 1.5e7, 9e6], {2: "loss = 1.5e+07 > 1e+06 (health.alarm.max_loss) for 2 epochs in a row (since epoch 1)",
                             3: "loss = 9e+06 > 1e+06 (health.alarm.max_loss) for 3 epochs in a row (since epoch 1)"}),
    ({}, [3.0, 40.0, 50.0], {3: "loss = 50 > 10 x epoch 1's 3 (health.alarm.max_loss_growth) for 2 epochs in a "
                                "row (since epoch 2)"}),
    ({}, [3.4, 3.4, 3.4], {3: "loss = 3.4 changed by 0 of epoch 2's 3.4, below 1e-06 (health.alarm.min_loss_change) "
                              "for 2 epochs in a row (since epoch 2)"}),
    ({"min_loss_change": 0.01}, [2.0, 1.99, 1.985], {3: "loss = 1.985 changed by 0.0025 of epoch 2's 1.99, below 0.01 "
                                                        "(health.alarm.min_loss_change) for 2 epochs in a row (since epoch 2)"}),
    ({}, [3.0, 3.0, 2.5, 2.5], {}),  # a change in between resets the streak
    ({"patience": 1}, [float("nan")], {1: "loss = nan > 1e+06 (health.alarm.max_loss) for 1 epochs in a row (since epoch 1)"}),
    ({}, [-0.3, -0.9, -0.99, -0.999], {}),  # a negative loss (SimSiam's) falling: no growth factor applies
    ({"max_loss": None, "max_loss_growth": None, "min_loss_change": None}, [3.0, 3e8, 3e8, 3e8], {}),
    ({"action": "off"}, [2e7, 2e7, 2e7], {}),
], ids=["healthy", "huge", "grows", "constant", "threshold", "reset", "nan", "negative", "nulls off", "action off"])
def test_the_loss_alarm_fires_after_patience_epochs_naming_the_signal(settings, losses, expected):
    alarm = LossAlarm(AlarmSection(**settings))
    fired = {}
    for epoch, loss in enumerate(losses, start=1):
        _, signals = alarm.observe({"loss": loss}, epoch)
        if signals:
            fired[epoch] = alarm.message(signals, epoch).removeprefix(f"loss alarm at epoch {epoch}: ")
    assert fired == expected


def test_advice_follows_the_kind_of_signal():
    alarm = LossAlarm(AlarmSection(patience=1))
    assert LossAlarm.advice(alarm.observe({"loss": 2e7}, 1)[1]) == DIVERGED
    assert LossAlarm.advice(alarm.observe({"loss": 2e7}, 2)[1]) == f"{DIVERGED}. {CONSTANT}"  # huge and constant


@pytest.mark.parametrize("key, value, expected", [
    ("max_loss", "0", "must be > 0 (or null to not check it), got 0.0"),
    ("max_loss_growth", "1.0", "must be > 1 (or null to not check it), got 1.0"),
    ("min_loss_change", "1.5", "must be >= 0 and < 1 (or null to not check it), got 1.5"),
])
def test_alarm_settings_out_of_range_are_recipe_errors(key, value, expected, registry):
    with pytest.raises(RecipeError) as info:
        load_recipe(TINY, [f"health.alarm.{key}={value}"])
    assert str(info.value) == f"<command line>:1:{len(f'health.alarm.{key}=') + 1}: error: health.alarm.{key}: {expected}"


# ---------------------------------------------------------------- in a real (tiny) training


def cl_run(tmp_path, monkeypatch, capsys, registry, *overrides: str) -> tuple[int, str, str, Path]:
    """``cl-run TINY ...`` in-process; the report is written without its plots (tests/unit/report/test_report.py
    covers them, and drawing them takes most of a tiny run's seconds)."""
    from clrun import plugin_manager, report
    from clrun.cli import main

    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    monkeypatch.setattr(report, "write_plots", lambda records, directory: {})
    code = main([str(TINY), f"run.dir={tmp_path}", "run.name=run", *SMALL, *overrides])
    out, err = capsys.readouterr()
    return code, out, err, tmp_path / "run"


def epoch_losses(folder: Path) -> list[float]:
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "epoch"]


def test_an_exploding_loss_halts_with_exit_1_naming_the_signal(tmp_path, monkeypatch, capsys, registry):
    code, _, err, folder = cl_run(tmp_path, monkeypatch, capsys, registry, "train.epochs=2", "health.alarm.action=halt",
                                  "health.alarm.patience=1", "health.alarm.max_loss=1.0")
    (loss,) = epoch_losses(folder)
    message = f"loss alarm at epoch 1: loss = {loss:.4g} > 1 (health.alarm.max_loss) for 1 epochs in a row (since epoch 1)"
    assert code == 1
    assert err.splitlines()[-1] == (
        f"cl-run: training halted: {message}; no checkpoint was written: the signal appeared before the first one. "
        f"{DIVERGED}. {WARN_ONLY}"
    )
    assert not (folder / "checkpoint.pt").exists()  # the diverging state is never checkpointed
    (check,) = [json.loads(line) for line in (folder / "health.jsonl").read_text(encoding="utf-8").splitlines()]
    assert check["alarm"]["signals"] == ["loss_max"] and check["alarm"]["fired"] == message


def test_a_constant_loss_halts_and_keeps_the_last_healthy_checkpoint(tmp_path, monkeypatch, capsys, registry):
    # Any change below 90% counts as "constant" here: the tiny run's loss falls by about 10% an epoch.
    code, _, err, folder = cl_run(tmp_path, monkeypatch, capsys, registry, "train.epochs=3", "health.alarm.action=halt",
                                  "health.alarm.patience=1", "health.alarm.min_loss_change=0.9")
    first, second = epoch_losses(folder)
    change = abs(second - first) / first
    assert code == 1
    assert err.splitlines()[-1] == (
        f"cl-run: training halted: loss alarm at epoch 2: loss = {second:.6g} changed by {change:.2g} of epoch 1's "
        f"{first:.6g}, below 0.9 (health.alarm.min_loss_change) for 1 epochs in a row (since epoch 2); the last "
        f"healthy checkpoint (epoch 1) is {folder / 'checkpoint.pt'}. {CONSTANT}. {WARN_ONLY}"
    )


def test_warn_prints_the_signal_and_trains_to_the_end(tmp_path, monkeypatch, capsys, registry):
    code, out, _, folder = cl_run(tmp_path, monkeypatch, capsys, registry, "train.epochs=1", "health.alarm.patience=1",
                                  "health.alarm.max_loss=1.0")
    (loss,) = epoch_losses(folder)
    assert code == 0
    assert (f"warning: loss alarm at epoch 1: loss = {loss:.4g} > 1 (health.alarm.max_loss) for 1 epochs in a row "
            f"(since epoch 1) (health.alarm.action=halt stops the run)") in out.splitlines()
    assert (folder / "checkpoint.pt").exists()


# ---------------------------------------------------------------- arguments outside sane ranges


@pytest.mark.parametrize("name, settings, hint", [
    ("clrun/ntxent", {}, " (SimCLR uses 0.5; 0.07 to 0.2 is common)"),
    ("clrun/moco", {"in_dim": 8}, " (MoCo v2 uses 0.2, MoCo v1 0.07)"),
    ("clrun/swav", {"in_dim": 8}, " (SwAV uses 0.1)"),
])
@pytest.mark.parametrize("temperature", [1e-8, 9.99e-4])
def test_every_loss_with_a_temperature_refuses_one_below_1e_3(name, settings, hint, temperature):
    import clrun

    factory = clrun.components("loss", name)[0].factory
    with pytest.raises(ComponentError) as info:
        factory(**settings, temperature=temperature)
    assert str(info.value) == (
        f"{name}: temperature must be a number >= 0.001{hint}, got {temperature!r}: the logits are similarities "
        f"divided by the temperature, and past +-1000 the softmax saturates and the loss explodes instead of training"
    )
    assert info.value.argument == "temperature"
    assert math.isclose(factory(**settings, temperature=1e-3).temperature, 1e-3)  # the bound itself is allowed


@pytest.mark.parametrize("command", [["check"], []], ids=["check", "train"])
def test_a_tiny_temperature_is_refused_before_training_with_exit_2(tmp_path, monkeypatch, capsys, registry, command):
    from clrun import plugin_manager
    from clrun.cli import main

    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    code = main([*command, str(TINY), f"run.dir={tmp_path / 'runs'}", "loss.temperature=1.0e-8"])
    err = capsys.readouterr().err
    assert code == 2
    # At the override that set the value (the second on the command line), and at its key.
    # A recipe problem, found by the validator from the loss's declared range before anything is built.
    assert err.splitlines()[0] == (
        "<command line>:2:18: error: loss.temperature: must be a number >= 0.001 (SimCLR uses 0.5; 0.07 to 0.2 is "
        "common), got 1e-08: the logits are similarities divided by the temperature, and past +-1000 the softmax "
        "saturates and the loss explodes instead of training"
    )
    assert not (tmp_path / "runs").exists()  # nothing was trained or written
