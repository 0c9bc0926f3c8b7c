"""The target's snapshot (``target.snapshot:``): a frozen copy of its backbone, refreshed on a schedule that
follows from the update count alone, seen on rescaled views, and started from a file's teacher with init:."""

from __future__ import annotations

import pytest
import torch

import clrun
from clrun.recipe.schema import SnapshotSection, TargetSection
from clrun.training.model.network import OnlineNetwork
from clrun.training.model.target import TargetNetwork


def network() -> OnlineNetwork:
    torch.manual_seed(0)
    backbone = clrun.create("backbone", "timm/test_vit", img_size=32, model_args={"dynamic_img_size": True})
    return OnlineNetwork(backbone, clrun.create("projector", "clrun/mlp", in_dim=64, hidden_dim=8, out_dim=4))


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def nudge(online: OnlineNetwork) -> None:
    with torch.no_grad():
        for p in online.parameters():
            p.add_(0.1)


@pytest.mark.parametrize("snapshot, refreshed_after", [
    (SnapshotSection(every=3), [3, 6, 9]),
    (SnapshotSection(every=3, after=5), [6, 9]),
    (SnapshotSection(every=2, max_refreshes=2), [2, 4]),
    (SnapshotSection(), []),  # never refreshed: the target as the run started
])
def test_the_snapshot_is_refreshed_at_its_steps_only(snapshot, refreshed_after):
    online = network()
    target = TargetNetwork(online, TargetSection(momentum=0.5, snapshot=snapshot), total_steps=10)
    assert same(target.snapshot, target.backbone) and not target.snapshot.training
    refreshed = []
    for update in range(1, 10):
        before = {k: v.clone() for k, v in target.snapshot.state_dict().items()}
        nudge(online)
        target.update(online)
        if not all(torch.equal(before[k], v) for k, v in target.snapshot.state_dict().items()):
            assert same(target.snapshot, target.backbone)  # a refresh copies the target as it is now
            refreshed.append(update)
    assert refreshed == refreshed_after
    assert not any(p.requires_grad for p in target.snapshot.parameters())


def test_the_snapshot_sees_rescaled_views_and_stays_in_eval_mode():
    target = TargetNetwork(network(), TargetSection(snapshot=SnapshotSection(scale=2.0)), total_steps=1)
    target.train()
    assert not target.snapshot.training and target.backbone.training
    views = [torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)]
    branch = target(views, wants=frozenset({"snapshot_tokens", "tokens"}))
    assert [t.grid for t in branch.snapshot_tokens] == [(4, 4), (4, 4)]  # 64 px views, 16 px patches
    assert [t.grid for t in branch.tokens] == [(2, 2), (2, 2)]
    expected = target.snapshot.forward_tokens(torch.nn.functional.interpolate(views[0], size=[64, 64], mode="bicubic"))
    assert torch.equal(branch.snapshot_tokens[0].patches, expected.patches)


def test_a_teachers_weights_start_the_snapshot_too():
    online = network()
    target = TargetNetwork(online, TargetSection(snapshot=SnapshotSection(every=5)), total_steps=1)
    teacher = {k: v + 1.0 for k, v in target.backbone.state_dict().items()}
    target.start_from({"backbone": teacher})
    assert all(torch.equal(target.snapshot.state_dict()[k], v) for k, v in teacher.items())


def test_a_recipe_that_reads_snapshot_tokens_without_a_snapshot_is_told_what_to_add(tmp_path):
    from pathlib import Path

    tiny = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
    recipe = clrun.load_recipe(tiny, ["backbone.name=timm/test_vit", "backbone.img_size=32", "backbone.mask_token=true",
                                      "projector.name=clrun/dino_head", "projector.out_dim=16", "target.momentum=0.99",
                                      "masking.generator.name=clrun/block_mask",
                                      "loss={name: clrun/gram_anchoring, loss: {name: clrun/ibot}}"])
    from clrun.training.setup import prepare

    with pytest.raises(clrun.UserError, match=r"loss: clrun/gram_anchoring reads target\.snapshot_tokens, which this "
                                              r"recipe does not produce: add a `snapshot:` in the `target:` section"):
        prepare(recipe, "check")
    recipe = clrun.load_recipe(tiny, ["backbone.name=timm/test_vit", "backbone.img_size=32", "backbone.mask_token=true",
                                      "projector.name=clrun/dino_head", "projector.out_dim=16", "target.momentum=0.99",
                                      "target.snapshot.every=2", "masking.generator.name=clrun/block_mask",
                                      "loss={name: clrun/gram_anchoring, loss: {name: clrun/ibot}}"])
    from clrun.commands.check import check

    lines = check(recipe)
    assert any(line.startswith("step: clrun/gram_anchoring loss ") for line in lines), lines
