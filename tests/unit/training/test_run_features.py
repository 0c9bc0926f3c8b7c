"""``Run.features``: embeds a data set once per step, however many evaluators ask for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clrun

TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"


@pytest.mark.usefixtures("no_report")  # the report is not under test here: skip its plots
def test_features_are_shared_within_a_step_and_recomputed_after_it(tmp_path):
    run = clrun.train(clrun.load_recipe(TINY, [f"run.dir={tmp_path}", "health.enabled=false"]))
    bank = clrun.create("dataset", "clrun/synthetic", num_images=40)
    same_contents = clrun.create("dataset", "clrun/synthetic", num_images=40)  # another object, same images
    other = clrun.create("dataset", "clrun/synthetic", num_images=40, seed=1)
    first = run.features(bank)
    assert run.features(same_contents) is first
    assert run.features(other) is not first
    assert not torch.equal(run.features(other)[0], first[0])
    with torch.no_grad():  # the encoder moves on: its features must be computed again
        next(run.encoder.parameters()).mul_(2.0)
    run.step += 1
    again = run.features(bank)
    assert again is not first and not torch.equal(again[0], first[0])
    assert torch.equal(again[2], first[2])  # same labels
