"""Run folders written before a refactoring still resume, evaluate and export (the deprecation rules in
docs/guides/plugins.md): tests/fixtures/ibot_tiny_run/ was written by cl-run 0.1.0 before the house
refactoring (issue 23), an iBOT run stopped after 3 of its 8 steps, with a target, a loss state (the
centers), masks and the since-deprecated ``masking.project_tokens``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

import clrun
from clrun.export import export, load_encoder

OLD_RUN = Path(__file__).parents[1] / "fixtures" / "ibot_tiny_run"
# Its recipe's masking.project_tokens warns on every load; the warning itself is tested once, below.
pytestmark = pytest.mark.filterwarnings("ignore:masking.project_tokens is deprecated")


@pytest.fixture
def old_run(tmp_path) -> Path:
    return Path(shutil.copytree(OLD_RUN, tmp_path / "ibot_tiny"))


def test_an_old_run_resumes_where_it_stopped(old_run, reports_skipped):
    recipe = clrun.load_recipe(old_run / "recipe.yaml", ["train.max_steps=8"])
    with reports_skipped():
        run = clrun.train(recipe, resume=old_run)
    assert (run.epoch, run.step) == (2, 7)  # the stopped epoch 1 counts as done: epoch 2's 4 steps follow
    records = [json.loads(line) for line in (old_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 8))  # one log, continued


def test_an_old_run_evaluates_as_it_did(old_run):
    from clrun.evaluation import evaluate

    results = evaluate(old_run)
    assert results["knn_top1"] == pytest.approx(0.4375)  # what cl-run 0.1.0 measured on this checkpoint


def test_an_old_run_exports_the_backbone_it_trained(old_run):
    file = export(old_run)
    saved = torch.load(old_run / "checkpoint.pt", map_location="cpu", weights_only=True)["network"]
    exported = safetensors.torch.load_file(str(file))
    assert len(exported) > 10
    for key, value in exported.items():
        assert torch.equal(value, saved[f"backbone.{key}"]), key
    encoder = load_encoder(file)  # and it builds the ViT it names
    assert torch.equal(encoder.state_dict()["cls_token"], exported["cls_token"])


def test_the_deprecated_project_tokens_key_loads_with_a_warning_and_leaves_the_recipe(old_run):
    from clrun.recipe import resolved
    from clrun.recipe.schema import RecipeDeprecationWarning

    assert "project_tokens: true" in (old_run / "recipe.yaml").read_text()
    with pytest.warns(RecipeDeprecationWarning, match=r"^masking\.project_tokens is deprecated and has no effect: the "
                                                      r"token projections are computed when the loss reads them"):
        recipe = clrun.load_recipe(old_run / "recipe.yaml")
    assert "project_tokens" not in resolved(recipe)["masking"]  # a new run folder's recipe no longer carries it
