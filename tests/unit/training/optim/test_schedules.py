"""Schedules for any scalar (clrun.schedule): values against their closed forms, bound to a loss's
attribute and to the optimizer's parameter groups, logged per step, resumed exactly, refused clearly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import clrun
from clrun.cli import main as cl_run_main
from clrun.schedule import Schedule, ScheduleError
from clrun.training import checkpointing

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"  # 64 images in batches of 16: 4 steps an epoch
TEMPERATURE = "loss.temperature={schedule: linear, start: 0.1, end: 0.3, until_epoch: 1}"
WEIGHT_DECAY = "optimizer.weight_decay={schedule: cosine, start: 0.04, end: 0.4}"

pytestmark = pytest.mark.usefixtures("no_report")


def cosine(start: float, end: float, progress: float) -> float:
    """Half a cosine from start to end (DINO's cosine_scheduler, without its warm-up)."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("settings, expected", [
    ({"schedule": "constant", "start": 0.5}, [0.5] * 12),
    # linear over the first epoch (4 steps), then the end value
    ({"schedule": "linear", "start": 0.04, "end": 0.07, "until_epoch": 1},
     [0.04 + 0.03 * s / 4 for s in range(4)] + [0.07] * 8),
    # cosine over the whole run (12 steps)
    ({"schedule": "cosine", "start": 0.04, "end": 0.4}, [cosine(0.04, 0.4, s / 12) for s in range(12)]),
    # start before the span, end after it; steps instead of epochs
    ({"schedule": "linear", "start": 1.0, "end": 0.0, "from_step": 2, "until_step": 6},
     [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0, 0, 0, 0, 0, 0]),
    # a linear warm-up from warmup_start, then the cosine over the rest of the run
    ({"schedule": "cosine", "start": 1.0, "end": 0.0, "warmup_epochs": 1, "warmup_start": 0.2},
     [0.2, 0.4, 0.6, 0.8] + [cosine(1.0, 0.0, s / 8) for s in range(8)]),
])
def test_a_schedule_follows_its_closed_form(settings, expected):
    schedule = Schedule(**settings)
    values = [schedule.at(step, steps_per_epoch=4, total_steps=12) for step in range(12)]
    assert values == pytest.approx(expected, abs=1e-12)
    assert schedule.initial == pytest.approx(expected[0], abs=1e-12)


@pytest.mark.parametrize("settings, field, message", [
    ({"schedule": "linear", "start": 0.1}, "end", "a linear schedule needs an end value"),
    ({"schedule": "constant", "start": 0.1, "end": 0.2}, "end",
     "a constant schedule stays at start (0.1); remove end or use linear"),
    ({"schedule": "cosine", "start": 0, "end": 1, "until_epoch": 2, "until_step": 8}, "until_step",
     "give until_epoch or until_step, not both"),
    ({"schedule": "cosine", "start": 0, "end": 1, "warmup_steps": -1}, "warmup_steps", "must be >= 0, got -1"),
])
def test_contradicting_settings_name_the_field(settings, field, message):
    with pytest.raises(ScheduleError) as error:
        Schedule(**settings)
    assert (error.value.field, str(error.value)) == (field, message)


def test_a_run_sets_and_logs_the_scheduled_values_every_step(tmp_path):
    recipe = clrun.load_recipe(TINY, [TEMPERATURE, WEIGHT_DECAY, "train.epochs=3", f"run.dir={tmp_path}",
                                      "run.name=r", "health.enabled=false"])
    run = clrun.train(recipe)
    lines = run.folder.metrics.read_text(encoding="utf-8").splitlines()
    steps = [r for r in map(json.loads, lines) if r["kind"] == "step"]
    assert [r["loss.temperature"] for r in steps] == pytest.approx([0.1, 0.15, 0.2, 0.25] + [0.3] * 8)
    assert [r["optimizer.weight_decay"] for r in steps] == pytest.approx([cosine(0.04, 0.4, s / 12) for s in range(12)])
    # What the loss and the optimizer used at the last step; biases and norms keep no weight decay.
    assert run.parts.loss_fn.temperature == 0.3
    decay, no_decay = run.parts.optimizer.param_groups
    assert decay["weight_decay"] == pytest.approx(cosine(0.04, 0.4, 11 / 12)) and no_decay["weight_decay"] == 0.0
    # The resolved recipe in the run folder keeps the schedule as written.
    saved = run.folder.read_recipe()
    assert saved["loss"]["temperature"] == {"schedule": "linear", "start": 0.1, "end": 0.3, "until_epoch": 1.0}


def test_a_resumed_run_continues_the_schedule_bit_for_bit(tmp_path, crash_after_first_checkpoint):
    overrides = [TEMPERATURE, WEIGHT_DECAY, "train.epochs=2", f"run.dir={tmp_path}", "health.enabled=false"]
    crash_after_first_checkpoint(clrun.load_recipe(TINY, [*overrides, "run.name=resumed"]))
    resumed = clrun.train(clrun.load_recipe(TINY, [*overrides, "run.name=resumed"]), resume=tmp_path / "resumed")
    straight = clrun.train(clrun.load_recipe(TINY, [*overrides, "run.name=straight"]))
    a, b = (checkpointing.load(r.folder.checkpoint) for r in (resumed, straight))
    for key, value in a["network"].items():
        assert torch.equal(value, b["network"][key]), key
    assert a["optimizer"]["param_groups"][0]["weight_decay"] == b["optimizer"]["param_groups"][0]["weight_decay"]


def test_check_shows_each_schedule_over_the_run(capsys):
    assert cl_run_main(["check", str(TINY), TEMPERATURE, WEIGHT_DECAY, "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "  schedule: loss.temperature: linear 0.1 -> 0.3 (until epoch 1); step 1: 0.1, step 12: 0.3\n" in out
    assert f"  schedule: optimizer.weight_decay: cosine 0.04 -> 0.4; step 1: 0.04, step 12: {cosine(0.04, 0.4, 11 / 12):.6g}\n" in out


class KeepsNoAttribute(torch.nn.Module):
    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.scale = weight  # stored under another name: cl-run cannot find it

    def forward(self, projections, **kwargs):
        return sum(p.pow(2).mean() for p in projections) * self.scale


@pytest.fixture
def with_a_loss_that_hides_its_setting(registry, monkeypatch):
    from clrun import plugin_manager

    registry = plugin_manager.load_registry(autoload=False)
    registry.add_all([clrun.Component("loss", "tests/hides", KeepsNoAttribute, "stores weight as scale")],
                     "tests.plugin (tests-dist 1.0)")
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    yield
    plugin_manager.set_default_registry(None)


@pytest.mark.parametrize("overrides, message", [
    (["views.0.transforms.0.scale={schedule: linear, start: 0.1, end: 0.3}"],
     "<command line>:1:28: error: views.0.transforms.0.scale: expected a list of 2 (a number, a number), got a mapping"),
    (["train.grad_clip={schedule: linear, start: 1, end: 3}"],
     "<command line>:1:17: error: train.grad_clip: expected a number, got a schedule; schedules are for the settings "
     "of a loss, projector, predictor or optimizer"),
    (["optimizer.lr={schedule: linear, start: 0.1, end: 0.3}", "scheduler={name: clrun/warmup_cosine}"],
     "<command line>:1:14: error: optimizer.lr: the learning rate follows the scheduler 'clrun/warmup_cosine' "
     "(<command line>:2:11); give lr a number, or remove the scheduler"),
    (["loss={name: tests/hides, weight: {schedule: linear, start: 1, end: 2}}"],
     "<command line>:1:34: error: loss.weight: loss 'tests/hides' keeps no number attribute 'weight', so cl-run "
     "cannot change it during the run; give a number, or (its author) store the setting as self.weight"),
])
def test_a_schedule_where_none_can_go_is_a_recipe_error(overrides, message, capsys, with_a_loss_that_hides_its_setting):
    assert cl_run_main(["check", str(TINY), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err.splitlines() and "Traceback" not in err


def test_a_nested_losss_schedule_sets_the_inner_loss():
    """A loss that wraps a loss (clrun/gram_anchoring): the inner entry's schedules reach the inner module."""
    from clrun.training.setup import prepare

    recipe = clrun.load_recipe(TINY, [
        "backbone.name=timm/test_vit", "backbone.img_size=32", "backbone.mask_token=true", "target.momentum=0.99",
        "projector={name: clrun/dino_head, out_dim: 16}", "target.snapshot.every=2", "masking.generator.name=clrun/block_mask",
        "loss={name: clrun/gram_anchoring, weight: {schedule: linear, start: 0, end: 1}, "
        "loss: {name: clrun/ibot, teacher_temperature: {schedule: linear, start: 0.04, end: 0.07}}}"])
    parts = prepare(recipe, "check").parts
    values = parts.schedules.apply(2)
    assert values == pytest.approx({"loss.weight": 0.5, "loss.loss.teacher_temperature": 0.055})
    assert parts.loss_fn.weight == pytest.approx(0.5) and parts.loss_fn.loss.teacher_temperature == pytest.approx(0.055)


# -- the reference code's own schedule arithmetic (DINO's utils.cosine_scheduler and teacher temperature) ----

def dino_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    """facebookresearch/dino utils.py, cosine_scheduler (commit 7c446df), as written there."""
    import numpy as np

    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup_schedule, schedule))


def test_a_warm_up_that_ends_at_the_peak_is_dinos_learning_rate_schedule():
    epochs, per_epoch = 6, 7
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    scheduler = clrun.create("scheduler", "clrun/warmup_cosine", optimizer=optimizer, total_steps=epochs * per_epoch,
                             steps_per_epoch=per_epoch, warmup_epochs=2, min_lr=1e-6, warmup_ends_at_peak=True)
    expected = dino_cosine_scheduler(5e-4, 1e-6, epochs, per_epoch, warmup_epochs=2)
    lrs = []
    for _ in range(epochs * per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs == pytest.approx(list(expected), rel=1e-12, abs=1e-18)
    assert lrs[13] == lrs[14] == 5e-4  # the warm-up's last step and the cosine's first are both at the peak


def test_a_per_epoch_schedule_is_dinos_teacher_temperature():
    """DINO's teacher temperature: np.linspace(0.04, 0.07, W) then 0.07, indexed by epoch."""
    import numpy as np

    epochs, per_epoch, warmup = 8, 5, 4
    official = np.concatenate((np.linspace(0.04, 0.07, warmup), np.ones(epochs - warmup) * 0.07))
    schedule = Schedule("linear", 0.04, 0.07, until_epoch=warmup - 1, per="epoch")
    values = [schedule.at(step, per_epoch, epochs * per_epoch) for step in range(epochs * per_epoch)]
    assert values == pytest.approx([official[step // per_epoch] for step in range(epochs * per_epoch)], rel=1e-15)
    assert schedule.describe() == "linear 0.04 -> 0.07 (until epoch 3, per epoch)"
    assert schedule.plain()["per"] == "epoch" and "per" not in Schedule("linear", 0.04, 0.07).plain()


def ijepa_schedules(lr: float, start_lr: float, final_lr: float, wd: float, final_wd: float, warmup: int, total: int):
    """I-JEPA's WarmupCosineSchedule and CosineWDSchedule (src/utils/schedulers.py) as train.py steps them: step()
    before each update, counting first, so update k has the value at position k + 1."""
    lrs, wds = [], []
    for position in range(1, total + 1):
        if position < warmup:
            lrs.append(start_lr + position / warmup * (lr - start_lr))
        else:
            progress = (position - warmup) / (total - warmup)
            lrs.append(max(final_lr, final_lr + (lr - final_lr) * 0.5 * (1 + math.cos(math.pi * progress))))
        progress = position / total
        value = final_wd + (wd - final_wd) * 0.5 * (1 + math.cos(math.pi * progress))
        wds.append(max(final_wd, value) if final_wd <= wd else min(final_wd, value))
    return lrs, wds


def test_a_step_ahead_is_ijepas_learning_rate_and_weight_decay():
    epochs, per_epoch = 3, 10
    total = epochs * per_epoch
    official_lr, official_wd = ijepa_schedules(1e-3, 2e-4, 1e-6, 0.04, 0.4, warmup=per_epoch, total=total)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = clrun.create("scheduler", "clrun/warmup_cosine", optimizer=optimizer, total_steps=total,
                             steps_per_epoch=per_epoch, warmup_epochs=1, warmup_lr=2e-4, min_lr=1e-6, offset_steps=1)
    weight_decay = Schedule("cosine", 0.04, 0.4, offset_steps=1)
    lrs, wds = [], []
    for step in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        wds.append(weight_decay.at(step, per_epoch, total))
        scheduler.step()
    assert lrs == pytest.approx(official_lr, rel=1e-12)
    assert lrs[0] == pytest.approx(2.8e-4) and wds[0] == pytest.approx(0.0409860588)  # never start_lr, never 0.04
    assert wds[:-1] == pytest.approx(official_wd[:-1], rel=1e-12)
    assert wds[-1] == 0.4
    resumed_at = {"steps": 12}  # a resume continues one step ahead: step 12 has position 13's lr
    scheduler.load_state_dict(resumed_at)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(official_lr[12], rel=1e-12)
    assert weight_decay.describe() == "cosine 0.04 -> 0.4 (1 step(s) ahead)"
    assert weight_decay.plain()["offset_steps"] == 1 and "offset_steps" not in Schedule("cosine", 0.04, 0.4).plain()
    with pytest.raises(ScheduleError, match="must be >= 0, got -1"):
        Schedule("cosine", 0.04, 0.4, offset_steps=-1)
