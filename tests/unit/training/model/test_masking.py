"""A recipe's ``masking:`` section: masks drawn per batch for the global views of a ViT, its tokens (masked
patches replaced by the mask token or dropped) and the target network's tokens of the whole views reach
the loss; bad combinations are errors at the section's line; a resumed masked run ends bit for bit where
an uninterrupted one does (the masks come from the checkpointed random stream)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clrun
from clrun.cli import main
from clrun.training import checkpointing
from clrun.training.step import forward_and_loss

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
VIT = """backbone:
  name: timm/vit_tiny_patch16_224
  img_size: 32
  mask_token: true
  model_args: {patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, dynamic_img_size: true}
"""
MASKING = """
target: {momentum: 0.9}
masking:
  generator: {name: clrun/block_mask, probability: 1.0}
"""

pytestmark = pytest.mark.usefixtures("no_report")  # the report is not under test here


def recipe_file(folder: Path, backbone: str = VIT, masking: str = MASKING, local: bool = True) -> Path:
    text = TINY.read_text(encoding="utf-8").replace("backbone:\n  name: timm/test_resnet\n", backbone) + masking
    if local:  # a local view of another size: never masked
        text = text.replace("      - name: kornia/RandomHorizontalFlip\n", """      - name: kornia/RandomHorizontalFlip
  - name: local
    local: true
    transforms:
      - name: kornia/RandomResizedCrop
        size: [16, 16]
""", 1)
    path = folder / "masked.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Spy(torch.nn.Module):
    """A loss that keeps what it was given."""

    def forward(self, out):
        self.out = out
        return sum(p.sum() for p in out.projections) * 0.0


def step_outputs(build_run, with_loss, path: Path, *overrides: str):
    run = with_loss(build_run(clrun.load_recipe(path, list(overrides))), Spy())  # a loss without reads: every output
    dataset = run.recipe.data.dataset.build()
    images = torch.stack([dataset[i][0] for i in range(16)])
    torch.manual_seed(0)
    forward_and_loss(run.parts, images, torch.device("cpu"), 0)
    return run.parts.loss_fn.out


def test_the_loss_gets_masks_tokens_and_the_targets_tokens(tmp_path, build_run, with_loss):
    out = step_outputs(build_run, with_loss, recipe_file(tmp_path))
    assert out.is_global == [True, True, False]
    assert out.masks[2] is None and out.tokens[2] is None  # the local view is not masked
    for view, (mask, tokens) in enumerate(zip(out.masks[:2], out.tokens[:2])):
        assert mask.visible.shape == (16, 16) and (~mask.visible).any(dim=1).all()  # a 4 x 4 grid, every image masked
        assert tokens.patches.shape == (16, 16, 32) and tokens.prefix.shape == (16, 1, 32) and tokens.grid == (4, 4)
        assert torch.equal(tokens.pooled, out.features[view])
    assert not torch.equal(out.masks[0].visible, out.masks[1].visible)  # drawn per view
    assert len(out.target_tokens) == 2 and out.target_tokens[0].patches.shape == (16, 16, 32)
    assert not out.target_tokens[0].patches.requires_grad and out.tokens[0].patches.requires_grad


def test_dropped_patches_leave_only_the_visible_tokens(tmp_path, build_run, with_loss):
    masking = "\nmasking:\n  generator: {name: clrun/random_mask, ratio: 0.75}\n  hidden: drop\n"
    out = step_outputs(build_run, with_loss, recipe_file(tmp_path, masking=masking))
    assert out.tokens[0].patches.shape == (16, 4, 32)  # 16 patches, 75% dropped
    assert out.target_tokens is None and out.target_projections is None  # no target section


def check(path: Path, capsys, *overrides: str) -> tuple[int, str]:
    code = main(["check", str(path), *overrides])
    return code, capsys.readouterr().err


def test_a_cnn_with_masking_is_refused_at_the_masking_line(tmp_path, capsys):
    path = recipe_file(tmp_path, backbone="backbone:\n  name: timm/test_resnet\n")
    code, err = check(path, capsys)
    line = path.read_text(encoding="utf-8").splitlines().index("  generator: {name: clrun/block_mask, probability: 1.0}") + 1
    assert code == 2
    assert (f"{path}:{line}:14: error: masking: the backbone timm/test_resnet has no patch tokens (a CNN?); masked "
            "views need a backbone that offers them, e.g. backbone.name: timm/vit_small_patch16_224") in err


@pytest.mark.parametrize("overrides,message", [
    (["backbone.mask_token=false"], "error: masking.hidden: mask_token replaces hidden patches by the backbone's mask "
                                    "token, and timm/vit_tiny_patch16_224 has none: set backbone.mask_token: true (or "
                                    "masking.hidden: drop)"),
    (["masking.hidden=drop"], "error: masking.hidden: drop needs the same visible count in every image, and "
                              "clrun/block_mask does not promise it (equal_counts); use hidden: mask_token, or a "
                              "generator with equal counts (e.g. clrun/random_mask)"),
])
def test_a_masking_the_backbone_or_generator_cannot_do_is_refused(tmp_path, capsys, overrides, message):
    code, err = check(recipe_file(tmp_path), capsys, *overrides)
    assert code == 2 and message in err


def test_a_masked_run_resumes_bit_for_bit(tmp_path, crash_after_first_checkpoint):
    path = recipe_file(tmp_path)

    def load(name):
        return clrun.load_recipe(path, ["train.epochs=2", f"run.dir={tmp_path}", f"run.name={name}", "health.enabled=false"])

    interrupted = crash_after_first_checkpoint(load("interrupted"))
    resumed = clrun.train(load("interrupted"), resume=interrupted)
    straight = clrun.train(load("straight"))
    a, b = (checkpointing.load(r.folder.checkpoint)["network"] for r in (resumed, straight))
    assert a.keys() == b.keys() and "backbone.pretext_mask_token" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["backbone.pretext_mask_token"].abs().sum() > 0  # the mask token learned (it starts at 0)


def test_check_describes_the_masking(tmp_path, capsys):
    code = main(["check", str(recipe_file(tmp_path))])
    out = capsys.readouterr().out
    assert code == 0
    assert "masking: clrun/block_mask on the global views' 4x4 patch grids; hidden patches replaced by the backbone's mask token" in out


def test_dropping_views_go_through_together_without_a_host_sync():
    """Views with one kept count share a backbone call, grouped by the count the masks know, and their kept
    patches are gathered by the masks' index: no count or ``nonzero`` is read back from the device."""
    from clrun.host_syncs import HostSyncCounter
    from clrun.training.model.network import embed

    device = torch.device("cpu")  # named: the counter takes what is made on it for device data
    backbone = clrun.create("backbone", "timm/vit_tiny_patch16_224", in_chans=1, img_size=16,
                            model_args={"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}).eval()
    original, calls = backbone.forward_tokens, []

    def recorded(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    backbone.forward_tokens = recorded
    torch.manual_seed(0)
    views = [torch.randn(2, 1, 16, 16, device=device) for _ in range(2)]
    masks = [clrun.create("mask", "clrun/random_mask")(2, (4, 4), device) for _ in views]
    with torch.no_grad(), HostSyncCounter() as counter:
        counter.counting = True
        features, _, tokens = embed(backbone, torch.nn.Identity(), views, masks, drop=True)
    assert dict(counter.counts) == {}
    assert len(calls) == 1 and calls[0]["visible_index"].shape == (4, 4)  # one call: 2 views of 2 images, 4 kept
    with torch.no_grad():
        for view, mask, t in zip(views, masks, tokens):
            alone = original(view, mask.visible, True)  # the kept patches read from the mask
            torch.testing.assert_close(t.patches, alone.patches)
