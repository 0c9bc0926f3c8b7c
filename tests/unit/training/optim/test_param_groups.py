"""Parameter groups from the recipe's ``params:`` section: learning-rate scales and weight decay per set of
parameters, a learning rate the scheduler leaves alone, parameters frozen for the first epochs, and
layer-wise learning-rate decay on a timm ViT against BEiT's and MAE's formula."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import clrun
from clrun.cli import main as cl_run_main
from clrun.training import checkpointing

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"  # 64 images in batches of 16: 4 steps an epoch
WARMUP = "scheduler={name: clrun/warmup_cosine, warmup_epochs: 1}"
PROJECTOR_RULE = "params={groups: [{match: [projector.*], lr_scale: 0.5, weight_decay: 0.3, fixed_lr: true}]}"
ADAMW = "optimizer={name: torch/AdamW, lr: 1.0e-3, weight_decay: 0.05}"
# A 2-block ViT on the tiny recipe's 32 px images.
VIT = ["backbone.name=timm/vit_tiny_patch16_224", "backbone.img_size=32", "backbone.model_args={patch_size: 8, depth: 2}"]

pytestmark = pytest.mark.usefixtures("no_report")


def recipe(tmp_path: Path, *overrides: str):
    return clrun.load_recipe(TINY, [f"run.dir={tmp_path}", "run.name=r", "health.enabled=false", *overrides])


def group_of(optimizer, parameter) -> dict:
    return next(g for g in optimizer.param_groups if any(p is parameter for p in g["params"]))


def test_without_rules_the_groups_are_weights_then_biases_and_norms(tmp_path, build_run):
    parts = build_run(recipe(tmp_path)).parts
    decay, no_decay = parts.optimizer.param_groups
    trainable = [p for m in (parts.network, parts.loss_fn) for p in m.parameters()]
    assert decay["params"] == [p for p in trainable if p.ndim > 1]
    assert no_decay["params"] == [p for p in trainable if p.ndim <= 1] and no_decay["weight_decay"] == 0.0
    assert set(decay) == set(no_decay)  # no extra keys: checkpoints of earlier releases still load


def test_a_rule_scales_the_rate_sets_the_decay_and_can_pin_the_rate(tmp_path):
    run = clrun.train(recipe(tmp_path, PROJECTOR_RULE, WARMUP, "train.epochs=2"))
    optimizer, projector = run.parts.optimizer, run.parts.network.projector
    weight, bias = projector.net[0].weight, projector.net[0].bias
    assert group_of(optimizer, weight)["weight_decay"] == 0.3
    assert group_of(optimizer, bias)["weight_decay"] == 0.0  # a bias keeps no weight decay
    assert group_of(optimizer, weight)["lr"] == 0.5e-3  # half the optimizer's 1e-3, never scheduled
    backbone = group_of(optimizer, next(run.parts.network.backbone.parameters()))
    assert backbone["lr"] != 1e-3 and "lr_factor" not in backbone  # the rest follows the warm-up and cosine
    # The logged lr is the first group's (the backbone's): a 4-step warm-up from 0, then the cosine.
    lines = run.folder.metrics.read_text(encoding="utf-8").splitlines()
    rates = [r["lr"] for r in map(json.loads, lines) if r["kind"] == "step"]
    assert rates[:5] == pytest.approx([0.0, 0.25e-3, 0.5e-3, 0.75e-3, 1e-3]) and rates[-1] < 0.2e-3


def test_a_scaled_group_follows_the_scheduler_at_its_scale(tmp_path, build_run):
    scaled = "params={groups: [{match: [projector.*], lr_scale: 0.25}]}"
    parts = build_run(recipe(tmp_path, scaled, WARMUP, "train.epochs=4")).parts
    for _ in range(6):
        parts.scheduler.step()
    projector = group_of(parts.optimizer, parts.network.projector.net[0].weight)
    backbone = group_of(parts.optimizer, next(parts.network.backbone.parameters()))
    assert projector["lr"] == pytest.approx(0.25 * backbone["lr"]) and backbone["lr"] > 0


def test_a_frozen_group_is_not_updated_for_exactly_its_epochs(tmp_path, build_run):
    frozen = "params={groups: [{match: [projector.*], frozen_epochs: 1}]}"
    initial = {k: v.clone() for k, v in build_run(recipe(tmp_path, frozen)).parts.network.state_dict().items()}
    one = clrun.train(recipe(tmp_path, frozen, "train.epochs=1", "run.name=one")).parts.network.state_dict()
    two = clrun.train(recipe(tmp_path, frozen, "train.epochs=2", "run.name=two")).parts.network.state_dict()
    weights = [k for k in initial if k.startswith("projector.") and k.endswith("weight")]
    assert weights and all(torch.equal(one[k], initial[k]) for k in weights)  # not even weight decay
    assert all(not torch.equal(two[k], initial[k]) for k in weights)  # from the 5th step on, it learns
    assert not torch.equal(one["backbone.conv1.0.weight"], initial["backbone.conv1.0.weight"])


def test_a_group_frozen_for_good_keeps_its_initialization_and_check_says_so(tmp_path, build_run, capsys):
    frozen = "params={groups: [{match: [backbone.patch_embed.*], frozen: true}]}"
    initial = build_run(recipe(tmp_path, *VIT, frozen)).parts.network.state_dict()
    trained = clrun.train(recipe(tmp_path, *VIT, frozen, "train.epochs=2", "run.name=t")).parts.network.state_dict()
    stem = [k for k in initial if k.startswith("backbone.patch_embed.")]
    assert stem and all(torch.equal(trained[k], initial[k]) for k in stem)  # MoCo v3's random patch projection
    assert not torch.equal(trained["backbone.blocks.0.attn.qkv.weight"], initial["backbone.blocks.0.attn.qkv.weight"])
    assert cl_run_main(["check", str(TINY), *VIT, frozen, f"run.dir={tmp_path}"]) == 0
    assert re.search(r"frozen \(never updated\): backbone\.patch_embed\.proj\.weight", capsys.readouterr().out)


def test_frozen_and_frozen_epochs_together_are_refused(tmp_path):
    with pytest.raises(clrun.UserError, match=r"params\.groups\.0\.frozen_epochs: frozen: true already keeps these "
                                              r"parameters fixed for the whole run; remove one of the two"):
        recipe(tmp_path, "params={groups: [{match: [projector.*], frozen: true, frozen_epochs: 1}]}")


def beit_layer(name: str, depth: int) -> int:
    """BEiT's / MAE's get_layer_id_for_vit, written from the papers' code: embeddings 0, block k is k + 1,
    the heads depth + 1. (timm puts the final norm with the last block.)"""
    if name.startswith(("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed")):
        return 0
    if match := re.match(r"backbone\.blocks\.(\d+)\.", name):
        return int(match.group(1)) + 1
    return depth if name.startswith("backbone.norm") else depth + 1


def test_layer_decay_gives_each_vit_layer_the_papers_rate(tmp_path, build_run):
    parts = build_run(recipe(tmp_path, *VIT, "params={layer_decay: 0.5}")).parts
    named = [(f"backbone.{n}", p) for n, p in parts.network.backbone.named_parameters()]
    named += [(f"projector.{n}", p) for n, p in parts.network.projector.named_parameters()]
    for name, parameter in named:
        expected = 1e-3 * 0.5 ** (2 + 1 - beit_layer(name, depth=2))
        assert group_of(parts.optimizer, parameter)["lr"] == pytest.approx(expected), name


def test_a_pinned_rate_stays_pinned_after_a_resume(tmp_path, crash_after_first_checkpoint):
    overrides = [PROJECTOR_RULE, WARMUP, "train.epochs=2"]
    crash_after_first_checkpoint(recipe(tmp_path, *overrides))
    resumed = clrun.train(recipe(tmp_path, *overrides), resume=tmp_path / "r")
    straight = clrun.train(recipe(tmp_path, *overrides, "run.name=straight"))
    a, b = (checkpointing.load(r.folder.checkpoint) for r in (resumed, straight))
    assert all(torch.equal(v, b["network"][k]) for k, v in a["network"].items())
    assert group_of(resumed.parts.optimizer, resumed.parts.network.projector.net[0].weight)["lr"] == 0.5e-3


def test_check_lists_the_groups(capsys):
    assert cl_run_main(["check", str(TINY), PROJECTOR_RULE]) == 0
    out = capsys.readouterr().out
    assert "  params: group 2: lr 0.0005; weight decay 0.3; lr fixed: projector.net.0.weight, projector.net.3.weight\n" in out


@pytest.mark.parametrize("overrides, message", [
    (["params={groups: [{match: [projecter.*]}]}"],
     "cl-run: error: params.groups.0.match: no trainable parameter matches 'projecter.*'; names start with "
     "backbone.*, projector.*"),
    (["params={layer_decay: 1.5}"],
     "<command line>:1:22: error: params.layer_decay: must be in (0, 1], e.g. 0.65 or 0.75, got 1.5"),
    (["params={groups: [{match: [], lr_scale: 2}]}"],
     "<command line>:1:26: error: params.groups.0.match: give at least one pattern, e.g. [predictor.*]"),
])
def test_a_rule_that_cannot_apply_is_refused(overrides, message, capsys):
    assert cl_run_main(["check", str(TINY), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err.splitlines(), err


def test_mask_tokens_are_weight_decayed_whatever_their_shape(tmp_path, build_run):
    """The official code of every method with a mask token (iBOT, MAE, I-JEPA, DINOv2) decays it: it is (1, D)
    or (1, 1, D) there; cl-run stores it 1-D, which the rule alone would exempt with the biases."""
    parts = build_run(recipe(tmp_path, *VIT, "backbone.mask_token=true", ADAMW)).parts
    token = parts.network.backbone.pretext_mask_token
    assert token.ndim == 1
    decay, no_decay = parts.optimizer.param_groups
    assert any(p is token for p in decay["params"]) and decay["weight_decay"] == 0.05
    assert all(p.ndim <= 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_a_checkpoint_from_before_mask_tokens_decayed_gives_each_tensor_its_own_moments(
        tmp_path, build_run, crash_after_first_checkpoint, monkeypatch):
    """A format-1 checkpoint grouped the mask token with the biases: restored today, where it is in the decayed
    group, every tensor gets the moments saved for it (torch pairs them by position in each group; without the
    regrouping the load fails on the groups' sizes)."""
    from clrun.run_folder import RunFolder
    from clrun.training.checkpointing import Checkpointer, state
    from clrun.training.optim import param_groups

    overrides = [*VIT, "backbone.mask_token=true", "train.epochs=2", ADAMW]
    with monkeypatch.context() as before:  # the grouping and format of earlier releases
        before.setattr(param_groups, "DECAYED_TOKENS", ())
        before.setattr(state, "FORMAT", 1)
        folder = crash_after_first_checkpoint(recipe(tmp_path, *overrides))
    saved = checkpointing.load(RunFolder(folder).checkpoint)
    assert saved["format"] == 1
    run = build_run(recipe(tmp_path, *overrides, "run.name=today"))
    trainable = [p for m in (run.parts.network, run.parts.loss_fn) for p in m.parameters() if p.requires_grad]
    as_saved = [p for p in trainable if p.ndim > 1] + [p for p in trainable if p.ndim <= 1]  # format 1's groups
    saved_index = [i for group in saved["optimizer"]["param_groups"] for i in group["params"]]
    assert len(saved_index) == len(as_saved)
    Checkpointer(run).restore(RunFolder(folder).checkpoint)
    for parameter, index in zip(as_saved, saved_index):  # no state: a tensor without gradients (the mask token)
        expected, restored = saved["optimizer"]["state"].get(index, {}), run.parts.optimizer.state.get(parameter, {})
        assert expected.keys() == restored.keys()
        assert all(torch.equal(expected[k], restored[k]) for k in expected)
    assert sum(1 for p in as_saved if p in run.parts.optimizer.state) == len(as_saved) - 1
    token = run.parts.network.backbone.pretext_mask_token
    assert group_of(run.parts.optimizer, token)["weight_decay"] == 0.05  # decayed from now on
