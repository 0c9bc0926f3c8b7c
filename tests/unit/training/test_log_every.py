"""Metrics read every train.log_every steps keep the per-step contract: the metrics file holds every step's
record, in order, with the values a run reading every step writes; the epoch's means are the same; a NaN
loss is reported at the read that sees it, naming the first bad step, and no step from it on is logged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import clrun
from clrun.training.step import NonFiniteLossError, Step

TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def trained(tmp_path: Path, name: str, *overrides: str) -> list[dict]:
    recipe = clrun.load_recipe(TINY, ["data.dataset.num_images=112", "health.enabled=false", f"run.dir={tmp_path}",
                                      f"run.name={name}", *overrides])  # 7 steps of 16 in one epoch
    clrun.train(recipe)
    return records(tmp_path / name)


def test_metrics_read_every_three_steps_are_every_steps_metrics(tmp_path):
    every = trained(tmp_path, "every", "train.log_every=1")
    batched = trained(tmp_path, "batched", "train.log_every=3")
    steps = [r for r in batched if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 8))
    assert values(batched, "step") == values(every, "step")
    assert values(batched, "epoch") == values(every, "epoch")


def values(rs: list[dict], kind: str) -> list[dict]:
    """The records of ``kind`` without their timings, which differ from run to run."""
    timings = ("images_per_s", "data_wait", "epoch_time_s")
    return [{k: v for k, v in r.items() if k not in timings} for r in rs if r["kind"] == kind]


def test_a_nan_loss_is_reported_at_the_read_naming_its_step(tmp_path, monkeypatch):
    # The views turn NaN from step 3 on (a NaN normalization mean): steps 3 and 4 are skipped on the device,
    # and the read at step 4 stops the run.
    recipe = clrun.load_recipe(TINY, ["data.dataset.num_images=112", "health.enabled=false", f"run.dir={tmp_path}",
                                      "train.log_every=4", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"])
    step = Step.__call__

    def nan_from_step_three(self, images, *places):
        if self.run.step == 2:
            self.parts.views.normalize.mean.fill_(math.nan)
        return step(self, images, *places)

    monkeypatch.setattr(Step, "__call__", nan_from_step_three)
    with pytest.raises(NonFiniteLossError, match=r"the loss is nan at epoch 1, step 3; no optimizer step was taken"):
        clrun.train(recipe)
    assert [r["step"] for r in records(tmp_path / "tiny") if r["kind"] == "step"] == [1, 2]
