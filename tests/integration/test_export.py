"""Encoder export: a trained run's backbone as a .safetensors file that timm and ``load_encoder`` load
with strict keys, giving bit-for-bit the features of the run's own encoder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import yaml

import clrun
from clrun.export import encoder_state, export, load_encoder, read_metadata, write_encoder

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, reports_skipped):
    """One tiny run (seconds) on 1-channel images, so exporting must carry ``in_chans`` along."""
    folder = tmp_path_factory.mktemp("runs")
    recipe = clrun.load_recipe(TINY, [f"run.dir={folder}", "run.name=enc", "data.dataset.channels=1",
                                      "backbone.in_chans=1"])
    with reports_skipped():  # the report is not under test here: skip its plots
        run = clrun.train(recipe)
    run.encoder.eval()
    return run, export(run.directory)


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def test_export_holds_the_backbone_and_its_recipe(trained):
    run, file = trained
    assert file == run.directory / "encoder.safetensors"
    tensors = safetensors.torch.load_file(str(file))  # plain safetensors reading: no pickle involved
    reference = run.encoder.state_dict()
    assert tensors.keys() == reference.keys()
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)

    meta = read_metadata(file)
    assert yaml.safe_load(meta["recipe"]) == yaml.safe_load((run.directory / "recipe.yaml").read_text())
    assert meta["backbone"] == "timm/test_resnet"
    assert json.loads(meta["backbone_args"]) == {"in_chans": 1}
    assert (meta["format"], meta["clrun_version"], meta["epoch"], meta["step"]) == ("pt", clrun.__version__, "1", "4")
    umask = os.umask(0)
    os.umask(umask)
    assert file.stat().st_mode & 0o777 == 0o666 & ~umask  # safetensors writes 0600: shareable like any file


def test_timm_checkpoint_path_gives_identical_features(trained, images):
    # create_model -> load_checkpoint(strict=True) -> load_state_dict picks safetensors by the suffix.
    run, file = trained
    model = timm.create_model("test_resnet", num_classes=0, in_chans=1, checkpoint_path=str(file))
    assert torch.equal(features(model, images), features(run.encoder, images))
    untrained = timm.create_model("test_resnet", num_classes=0, in_chans=1)  # the equality is not trivial
    assert not torch.allclose(features(untrained, images), features(run.encoder, images))


def test_timm_pretrained_file_overlay_gives_identical_features(trained, images):
    # load_pretrained keeps a stem weight whose shape already fits in_chans, and stays strict when the
    # overlay's num_classes equals the model's (0); no network access when `file` is set.
    run, file = trained
    model = timm.create_model("test_resnet", pretrained=True, num_classes=0, in_chans=1,
                              pretrained_cfg_overlay=dict(file=str(file), num_classes=0))
    assert torch.equal(features(model, images), features(run.encoder, images))


def test_timm_routes_are_strict(trained, tmp_path):
    run, file = trained
    tensors = safetensors.torch.load_file(str(file))
    del tensors["fc.weight" if "fc.weight" in tensors else sorted(tensors)[-1]]
    partial = write_encoder(tmp_path / "partial.safetensors", tensors, yaml.safe_load(read_metadata(file)["recipe"]))
    with pytest.raises(RuntimeError, match="Missing key"):
        timm.create_model("test_resnet", num_classes=0, in_chans=1, checkpoint_path=str(partial))
    with pytest.raises(RuntimeError, match="Missing key"):
        timm.create_model("test_resnet", pretrained=True, num_classes=0, in_chans=1,
                          pretrained_cfg_overlay=dict(file=str(partial), num_classes=0))
    # Why the overlay in docs/guides/evaluation.md (Export) sets num_classes=0: without it timm's default cfg says 1000 classes, so
    # load_pretrained drops the classifier and loads non-strictly; the missing key passes silently.
    timm.create_model("test_resnet", pretrained=True, num_classes=0, in_chans=1,
                      pretrained_cfg_overlay=dict(file=str(partial)))


def test_load_encoder_gives_identical_features(trained, images):
    run, file = trained
    model = load_encoder(file)
    assert not model.training
    assert torch.equal(features(model, images), features(run.encoder, images))


def test_load_encoder_rejects_weights_of_another_shape(trained, tmp_path):
    run, file = trained
    recipe = yaml.safe_load(read_metadata(file)["recipe"])
    recipe["backbone"] = {"name": "timm/test_resnet", "in_chans": 3}  # the tensors are of in_chans=1
    wrong = write_encoder(tmp_path / "wrong.safetensors", safetensors.torch.load_file(str(file)), recipe)
    with pytest.raises(clrun.UserError) as err:
        load_encoder(wrong)
    assert str(err.value).startswith(
        f"{wrong}: its tensors do not fit backbone timm/test_resnet with {{'in_chans': 3}} (Error(s) in loading")


def test_error_messages(trained, tmp_path):
    run, _ = trained
    with pytest.raises(clrun.UserError) as err:
        export(tmp_path)
    assert str(err.value) == (f"export: no checkpoint at {tmp_path / 'checkpoint.pt'} (pass a run folder holding "
                              f"checkpoint.pt, or the checkpoint file itself)")

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(run.directory / "checkpoint.pt", lone)
    with pytest.raises(clrun.UserError) as err:
        export(lone / "checkpoint.pt")
    assert str(err.value) == (f"export: no recipe.yaml at {lone / 'recipe.yaml'}; the export records the recipe its "
                              f"checkpoint {lone / 'checkpoint.pt'} was trained with: put that run's recipe.yaml beside it")

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(clrun.UserError) as err:
        load_encoder(plain)
    assert str(err.value) == (f"{plain} is not a cl-run encoder export (its metadata has no `backbone` entry); "
                              f"export a run with clrun.export.export(<run folder>)")

    with pytest.raises(clrun.UserError) as err:
        load_encoder(tmp_path / "missing.safetensors")
    assert str(err.value) == (f"no encoder file at {tmp_path / 'missing.safetensors'} "
                              f"(export one with clrun.export.export(<run folder>))")

    with pytest.raises(clrun.UserError) as err:
        export(run.directory, tmp_path / "encoder.pt")
    assert str(err.value) == f"export: {tmp_path / 'encoder.pt'}: the output file name must end in .safetensors"


def test_a_failed_write_leaves_no_partial_file(trained, tmp_path, monkeypatch):
    run, _ = trained
    real_save = safetensors.torch.save_file

    def crash_midway(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])  # as if the process died mid-write
        raise OSError("disk full")

    previous = export(run.directory, tmp_path / "kept.safetensors").read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        export(run.directory, tmp_path / "new.safetensors")
    with pytest.raises(OSError, match="disk full"):
        export(run.directory, tmp_path / "kept.safetensors")
    # No new file, the earlier complete file untouched, no temporary file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.safetensors"]
    assert (tmp_path / "kept.safetensors").read_bytes() == previous


def test_encoder_state_strips_the_prefix_and_copies_contiguously():
    conv = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)  # as in a channels_last run
    network = {"backbone.conv1.weight": conv, "projector.0.weight": torch.randn(2, 2)}
    state = encoder_state(network)
    assert list(state) == ["conv1.weight"]
    assert state["conv1.weight"].is_contiguous() and torch.equal(state["conv1.weight"], conv)
    assert state["conv1.weight"].data_ptr() != conv.data_ptr()


def test_a_vits_mask_token_stays_out_of_the_encoder_file(tmp_path):
    """Pre-training-only tensors (named pretext_*) are not exported: timm's own ViT loads the file strictly,
    and load_encoder rebuilds the backbone with its mask token at its initial value."""
    args = {"in_chans": 1, "img_size": 28, "model_args": {"patch_size": 7, "embed_dim": 48, "depth": 2, "num_heads": 3}}
    backbone = clrun.create("backbone", "timm/vit_tiny_patch16_224", mask_token=True, **args)
    state = encoder_state({f"backbone.{k}": v for k, v in backbone.state_dict().items()})
    assert "pretext_mask_token" in backbone.state_dict() and "pretext_mask_token" not in state
    recipe = {"backbone": {"name": "timm/vit_tiny_patch16_224", "mask_token": True, **args}}
    file = write_encoder(tmp_path / "vit.safetensors", state, recipe)
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=1, img_size=28, checkpoint_path=str(file),
                              **args["model_args"])
    rebuilt = load_encoder(file)
    assert not rebuilt.pretext_mask_token.any()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), backbone.eval()(x))
        torch.testing.assert_close(rebuilt(x), backbone(x))
