"""clrun/finetune: copies of the encoder and a linear head trained end to end on labeled images.

(1) On classes a network can learn in a few steps, fine-tuning reaches a high test accuracy, from a
    linear-probe head (LP-FT, the default) and from a random one.
(2) The run's own network, and torch's global random generator, are unchanged by an evaluation;
    evaluating twice gives the same numbers.
(3) Through a real training, the callback reports ``finetune_top1`` and ``finetune_top1_projector``.
(4) The augmentation is a crop-and-flip drawn from a private generator.
(5) Unlabeled data and bad arguments are errors with exact messages.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import clrun
from clrun.plugins.callbacks.finetune import FineTune, random_resized_crop_flip
from clrun.plugins.datasets.synthetic import Synthetic

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
CHANCE = 0.25


class Textures(Dataset):
    """Labeled uint8 images (3, 32, 32) of 4 classes that survive crops and mirroring: horizontal stripes,
    vertical stripes, a checkerboard, no pattern; random period, phase and contrast, plus pixel noise."""

    def __init__(self, n: int, seed: int, size: int = 32) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % 4
        c = torch.arange(size, dtype=torch.float32)
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        period = (4 + 4 * torch.rand(n, generator=g))[:, None, None]
        phase = 2 * math.pi * torch.rand(n, 2, generator=g)
        rows = torch.sin(2 * math.pi * yy / period + phase[:, 0, None, None])
        cols = torch.sin(2 * math.pi * xx / period + phase[:, 1, None, None])
        k = self.targets[:, None, None]
        pattern = torch.where(k == 0, rows, torch.where(k == 1, cols, torch.where(k == 2, rows * cols, 0.0)))
        contrast = 50 + 30 * torch.rand(n, 1, 1, 1, generator=g)
        pixels = 128 + contrast * pattern[:, None] + 25 * torch.randn(n, 3, size, size, generator=g)
        self.images = pixels.round().clamp(0, 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


def weights(run) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.parts.network.state_dict().items()}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, reports_skipped):
    """A 1-epoch tiny SimCLR run (timm/test_resnet on 64 synthetic images)."""
    folder = tmp_path_factory.mktemp("pretrained")
    with reports_skipped():  # the report is not under test here: skip its plots
        return clrun.train(clrun.load_recipe(TINY, [f"run.dir={folder}", "health.enabled=false"]))


def test_fine_tuning_learns_and_leaves_the_run_untouched(pretrained):
    before, rng = weights(pretrained), torch.get_rng_state()
    finetune = FineTune(Textures(128, seed=0), Textures(128, seed=1), epochs=3, lr=1e-3, batch_size=32)
    accuracy = finetune.evaluate(pretrained)
    assert set(accuracy) == {"finetune_top1", "finetune_top1_projector"}
    assert accuracy["finetune_top1"] >= 0.9, accuracy  # 0.98 here (chance: 0.25)
    assert accuracy["finetune_top1_projector"] >= 0.9, accuracy  # 0.98 here
    after = weights(pretrained)
    assert all(torch.equal(before[k], after[k]) for k in before)  # deep copies were trained, not the run's network
    assert pretrained.parts.network.training  # nor its mode changed
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_random_head_learns_too_and_evaluating_again_gives_the_same_numbers(pretrained):
    finetune = FineTune(Textures(128, seed=0), Textures(128, seed=1), epochs=3, lr=1e-3, batch_size=32,
                        head_init="random", branches=["backbone"])
    accuracy = finetune.evaluate(pretrained)
    assert list(accuracy) == ["finetune_top1"]
    assert accuracy["finetune_top1"] >= 0.9, accuracy  # 0.98 here
    assert finetune.evaluate(pretrained) == accuracy


@pytest.mark.usefixtures("no_report")  # the report is not under test here: skip its plots
def test_the_callback_reports_both_accuracies_through_training(tmp_path, capfd):
    data = "{name: clrun/synthetic, num_images: 64, num_classes: 4, seed: %d}"
    callback = f"{{name: clrun/finetune, epochs: 1, batch_size: 32, train: {data % 2}, test: {data % 1}}}"
    run = clrun.train(clrun.load_recipe(TINY, [f"run.dir={tmp_path}", f"callbacks=[{callback}]", "health.enabled=false"]))
    summary = json.loads((run.directory / "summary.json").read_text(encoding="utf-8"))
    for key in ("finetune_top1", "finetune_top1_projector"):
        assert 0.0 <= summary[key] <= 1.0, summary
    assert "fine-tuned top-1 on 64 test images: " in capfd.readouterr().out


def test_the_augmentation_crops_and_mirrors_from_its_own_generator():
    x = torch.rand(16, 3, 8, 8)
    rng = torch.get_rng_state()
    whole = random_resized_crop_flip(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(torch.get_rng_state(), rng)
    mirrored = [torch.allclose(w, xi.flip(-1), atol=1e-6) for w, xi in zip(whole, x)]
    kept = [torch.allclose(w, xi, atol=1e-6) for w, xi in zip(whole, x)]
    assert all(m != k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 16  # each one or the other
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, random_resized_crop_flip(x, torch.Generator().manual_seed(1)))
    assert a.shape == x.shape and not torch.allclose(a, x)


class Unlabeled(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((3, 32, 32), 10 * i, dtype=torch.uint8), -1


def test_unlabeled_data_is_an_error(pretrained):
    with pytest.raises(clrun.UserError) as info:
        FineTune(Synthetic(16, 4), Unlabeled()).evaluate(pretrained)
    assert str(info.value) == "clrun/finetune needs labeled train and test data sets (some labels are -1, i.e. unlabeled)"


DATA = {"name": "clrun/synthetic", "num_images": 8}


@pytest.mark.parametrize("branches, message", [
    (["foo"], "branches.0: expected one of 'backbone', 'projector', got string 'foo'"),
    ([], "clrun/finetune: branches must name each of 'backbone' and 'projector' at most once, and at least one "
         "of them; got []"),
    (["projector", "projector"], "clrun/finetune: branches must name each of 'backbone' and 'projector' at most "
                                 "once, and at least one of them; got ['projector', 'projector']"),
])
def test_bad_branches_are_errors(branches, message):
    with pytest.raises(clrun.ComponentError) as info:
        clrun.create("callback", "clrun/finetune", train=DATA, test=DATA, branches=branches)
    assert str(info.value).endswith(message)


def test_bad_numbers_are_errors():
    with pytest.raises(clrun.ComponentError) as info:
        clrun.create("callback", "clrun/finetune", train=DATA, test=DATA, epochs=0, head_lr_scale=0)
    assert str(info.value) == (  # the ranges the signature declares, each at its argument
        "clrun.create('callback', 'clrun/finetune'): epochs: must be an integer >= 1, got 0\n"
        "clrun.create('callback', 'clrun/finetune'): head_lr_scale: must be a number > 0, got 0.0")
    with pytest.raises(clrun.ComponentError) as info:  # built directly: clrun.checked, the same limits
        FineTune(Textures(8, seed=0), Textures(8, seed=1), weight_decay=-0.1)
    assert (str(info.value), info.value.argument) == (
        "clrun/finetune: weight_decay must be a number >= 0, got -0.1", "weight_decay")
    finetune = clrun.create("callback", "clrun/finetune", train=DATA, test=DATA, branches=["projector"])
    assert isinstance(finetune, FineTune) and finetune.branches == ["projector"]


def test_layer_decay_gives_each_vit_layer_its_rate():
    """BEiT/MAE's rule on a 2-block ViT (timm's layers: stem 0, blocks 1 and 2, the final norm with the last
    block): rate lr * decay ** (3 - layer); the head at lr * head_lr_scale; biases and norms without decay."""
    backbone = clrun.create("backbone", "timm/vit_tiny_patch16_224", in_chans=1, img_size=28,
                            model_args={"patch_size": 7, "embed_dim": 48, "depth": 2, "num_heads": 3})
    model = torch.nn.Sequential(backbone, torch.nn.Linear(48, 4))
    finetune = FineTune(Textures(8, seed=0), Textures(8, seed=1), lr=1.0, head_lr_scale=10.0, layer_decay=0.5)
    rate = {}
    for group in finetune.parameter_groups(model):
        for p in group["params"]:
            rate[p] = (group["lr"], group.get("weight_decay", "default"))
    named = dict(backbone.named_parameters())
    assert rate[named["patch_embed.proj.weight"]] == (0.125, "default")
    assert rate[named["cls_token"]][0] == 0.125
    assert rate[named["blocks.0.attn.qkv.weight"]] == (0.25, "default")
    assert rate[named["blocks.0.attn.qkv.bias"]] == (0.25, 0.0)
    assert rate[named["blocks.1.mlp.fc1.weight"]] == (0.5, "default")
    assert rate[named["norm.weight"]] == (0.5, 0.0)
    assert rate[model[1].weight] == (10.0, "default") and rate[model[1].bias] == (10.0, 0.0)
    assert len(rate) == len(list(model.parameters()))
    plain = FineTune(Textures(8, seed=0), Textures(8, seed=1), lr=1.0)
    assert {g["lr"] for g in plain.parameter_groups(model)} == {1.0, 10.0}


def test_layer_decay_needs_a_backbone_with_layers(pretrained):
    finetune = FineTune(Textures(8, seed=0), Textures(8, seed=1), layer_decay=0.7)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    with pytest.raises(clrun.UserError) as info:
        finetune.parameter_groups(model)
    assert str(info.value) == ("clrun/finetune: layer_decay needs a backbone that says how its parameters form layers "
                               "(a layer_ids() method, as timm backbones have); remove layer_decay for this backbone")
    with pytest.raises(clrun.ComponentError) as info:
        FineTune(Textures(8, seed=0), Textures(8, seed=1), layer_decay=1.5)
    assert str(info.value) == ("clrun/finetune: layer_decay must be a number > 0 and <= 1 (MAE fine-tunes ViTs with "
                               "0.65-0.75), got 1.5")
