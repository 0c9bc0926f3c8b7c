"""The init: section carried out on a freshly built network: which tensors load where, what is resampled,
what does not fit, which network the target starts from, and what the recipe is warned about."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

import clrun
from clrun.training.setup import prepare
from clrun.weights.files import read_file

TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"
VIT = ["backbone.name=timm/test_vit", "backbone.img_size=32"]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def built(*overrides: str):
    return prepare(clrun.load_recipe(TINY, list(overrides)), "check").parts


def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A timm model folder (config.json + model.safetensors) of test_vit trained at 64 px, ImageNet mean/std."""
    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(1)
    state = tensors(clrun.create("backbone", "timm/test_vit", img_size=64))
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))
    config = {"architecture": "test_vit", "pretrained_cfg": {**IMAGENET, "input_size": [3, 64, 64], "license": "apache-2.0"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, state


def test_a_model_folder_loads_every_tensor_with_position_embeddings_resampled(model_folder):
    folder, state = model_folder
    parts = built(*VIT, f"init.backbone.source={folder}")
    loaded = parts.network.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k != "pos_embed")
    assert loaded["pos_embed"].shape == (1, 5, 64)  # 2 x 2 patches of a 32 px view, plus the class token
    report = parts.init.reports[0]
    assert (report.layout, report.network, report.loaded) == ("timm/local-dir", "model", len(state))
    assert report.resized == ["pos_embed: (1, 17, 64) -> (1, 5, 64)"]
    assert parts.init.licences == {str(folder): "apache-2.0"}
    assert parts.init.warnings == [
        f"init.backbone: the weights were trained on images normalized with mean {IMAGENET['mean']} and std "
        f"{IMAGENET['std']}; the recipe normalizes with data.mean None and data.std None: set data.mean: "
        f"{IMAGENET['mean']} and data.std: {IMAGENET['std']} to feed them what they know",
        "init.backbone: the weights were trained on 64 px images; the recipe's global views are 32 x 32 (position "
        "embeddings are resampled)"]


def test_weights_of_another_model_are_refused_with_the_list_or_loaded_in_part(model_folder, tmp_path):
    folder, _ = model_folder
    with pytest.raises(clrun.UserError) as caught:
        built(f"init.backbone.source={folder}")  # test_resnet's recipe, a ViT's weights
    assert re.fullmatch(
        rf"init\.backbone: no tensor of {re.escape(str(folder))} fits the recipe's backbone \(90 missing from the file "
        r"\(left at initialization\): bn1\.bias, .*, \.\.\. \(90 in all\); 78 in the file but not in the model "
        r"\(unused\): blocks\.0\.attn\.proj\.bias, .*\); is it a file of this part, and does the recipe build the "
        r"model it was trained as\?", str(caught.value))
    # Another model's weights with some that fit: strict names them all.
    torch.save({"cls_token": torch.zeros(1, 1, 64), "extra": torch.zeros(2)}, tmp_path / "some.pth")
    with pytest.raises(clrun.UserError) as caught:
        built(*VIT, f"init.backbone.source={tmp_path / 'some.pth'}")
    assert str(caught.value).endswith("1 in the file but not in the model (unused): extra; check that the recipe builds "
                                      "the model the weights were trained as (name, patch size, width, depth, register "
                                      "tokens), or set init.backbone.strict=false to load the 1 tensors that fit")
    # A ViT of another width: strict=false loads the tensors of the shapes that fit, and says which did not.
    torch.save({"state_dict": {"cls_token": torch.zeros(1, 1, 64), "pos_embed": torch.zeros(1, 5, 64),
                               "norm.weight": torch.full((64,), 2.0), "norm.bias": torch.zeros(3)}},
               tmp_path / "partial.pth")
    parts = built(*VIT, f"init.backbone.source={tmp_path / 'partial.pth'}", "init.backbone.strict=false")
    report = parts.init.reports[0]
    assert report.layout == "clrun/state_dict" and report.loaded == 3
    assert report.mismatched == ["norm.bias: file (3,) vs model (64,)"]
    assert torch.equal(parts.network.backbone.norm.weight, torch.full((64,), 2.0))


def test_a_checkpoints_target_network_starts_the_target(tmp_path):
    reference = built(*VIT, "target.momentum=0.99")
    online, target = tensors(reference.network), tensors(reference.target)
    target = {k: v + 1.0 if v.is_floating_point() else v for k, v in target.items()}  # tell the two apart
    torch.save({"network": online, "target": target}, tmp_path / "checkpoint.pt")
    parts = built(*VIT, "target.momentum=0.99", "seed=5", f"init.backbone.source={tmp_path / 'checkpoint.pt'}",
                  f"init.projector.source={tmp_path / 'checkpoint.pt'}")
    assert [r.part for r in parts.init.reports] == ["backbone", "projector", "target.backbone", "target.projector"]
    for name, value in parts.network.state_dict().items():
        assert torch.equal(value, online[name]), name
    for name, value in parts.target.state_dict().items():
        if name.split(".")[0] in ("backbone", "projector"):
            assert torch.equal(value, target[name]), name
    # The online network's weights for the target too, when asked.
    again = built(*VIT, "target.momentum=0.99", f"init.backbone.source={tmp_path / 'checkpoint.pt'}",
                  f"init.target.source={tmp_path / 'checkpoint.pt'}", "init.target.network=online")
    assert torch.equal(again.target.backbone.norm.weight, online["backbone.norm.weight"])


def test_the_check_reports_a_hub_repository_it_cannot_reach_and_checks_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = [line for line in clrun_check(*VIT, "init.backbone.source=timm/test_vit.r160_in1k") if line.startswith("init:")]
    assert lines == ["init: backbone <- timm/test_vit.r160_in1k: downloaded at training (not in the local Hugging Face "
                     "cache); checked on random weights"]


def test_a_part_the_recipe_lacks_and_a_network_the_file_lacks_are_named(model_folder):
    folder, _ = model_folder
    with pytest.raises(clrun.UserError, match=r"^init\.predictor: the recipe has no predictor to load weights into; "
                                              r"remove init\.predictor or add a predictor: section$"):
        built(*VIT, f"init.predictor.source={folder}")
    with pytest.raises(clrun.UserError, match=r"^init\.backbone\.network: \S+ holds no network 'teacher'; it holds model$"):
        built(*VIT, f"init.backbone.source={folder}", "init.backbone.network=teacher")
    with pytest.raises(clrun.UserError, match=r"^init\.projector: \S+ \(timm/local-dir, network model\) holds no "
                                              r"projector; it holds backbone$"):
        built(*VIT, f"init.projector.source={folder}")


def clrun_check(*overrides: str) -> list[str]:
    from clrun.commands.check import check

    return check(clrun.load_recipe(TINY, list(overrides)))


# -- an official checkpoint through a recipe: tests/fixtures/official_weights (the official code's own layouts) --

OFFICIAL = Path(__file__).parents[2] / "fixtures" / "official_weights"
# The fixtures' tiny ViT (width 16, depth 2, 2 heads, 7 px patches of 28 px images) and DINO head, as a recipe.
TINY_VIT = ["data.dataset.size=28", "views.0.transforms.0.size=[28, 28]", "backbone.name=timm/vit_tiny_patch16_224",
            "backbone.img_size=28", "backbone.model_args={patch_size: 7, embed_dim: 16, depth: 2, num_heads: 2, mlp_ratio: 2}",
            "projector={name: clrun/dino_head, out_dim: 32, hidden_dim: 16, bottleneck_dim: 8}", "loss={name: clrun/dino}",
            "target.momentum=0.99"]


def test_an_official_checkpoint_starts_the_online_network_and_the_target_from_its_networks():
    file = OFFICIAL / "dino_checkpoint.pth"
    parts = built(*TINY_VIT, f"init.backbone.source={file}", f"init.projector.source={file}",
                  "init.backbone.network=student", "init.projector.network=student")
    assert [(r.part, r.layout, r.network, r.loaded, r.missing, r.unexpected) for r in parts.init.reports] == [
        ("backbone", "clrun/dino", "student", 30, [], []), ("projector", "clrun/dino", "student", 8, [], []),
        ("target.backbone", "clrun/dino", "teacher", 30, [], []), ("target.projector", "clrun/dino", "teacher", 8, [], [])]
    assert parts.init.licences == {str(file): "Apache-2.0"}
    content = read_file(file, "fixture").content  # read as cl-run reads it: no code run
    student = {k.removeprefix("module."): v for k, v in content["student"].items()}
    teacher = content["teacher"]
    assert torch.equal(parts.network.backbone.blocks[1].mlp.fc2.weight, student["backbone.blocks.1.mlp.fc2.weight"])
    assert torch.equal(parts.target.backbone.blocks[1].mlp.fc2.weight, teacher["backbone.blocks.1.mlp.fc2.weight"])
    assert torch.equal(parts.target.projector.mlp[0].weight, teacher["head.mlp.0.weight"])
    assert not torch.equal(parts.network.backbone.cls_token, parts.target.backbone.cls_token)


def test_a_released_mask_token_fills_the_models_mask_token():
    file = OFFICIAL / "ibot_checkpoint.pth"
    parts = built(*TINY_VIT, "backbone.mask_token=true", f"init.backbone.source={file}", "init.backbone.network=student")
    student = read_file(file, "fixture").content["student"]
    masked = next(v for k, v in student.items() if k.endswith("masked_embed"))
    assert torch.equal(parts.network.backbone.pretext_mask_token, masked.reshape(-1))
    assert parts.init.reports[0].pretext == []


def test_another_patch_size_is_resampled_and_warned_about(model_folder):
    folder, _ = model_folder
    parts = built(*VIT, "backbone.model_args={patch_size: 8}", f"init.backbone.source={folder}")
    assert parts.init.reports[0].resized == ["patch_embed.proj.weight: (64, 3, 16, 16) -> (64, 3, 8, 8)"]
    assert parts.init.warnings[-1] == ("init.backbone: patch_embed.proj.weight was resampled (64, 3, 16, 16) -> "
                                       "(64, 3, 8, 8) (a patch size other than the weights'): the features change; "
                                       "prefer the weights' patch size")
