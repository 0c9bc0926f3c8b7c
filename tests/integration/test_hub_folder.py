"""``cl-run export RUN --hub-folder DIR``: a Hugging Face model folder that timm builds by itself
(``timm.create_model("local-dir:DIR", pretrained=True)``), giving the run's encoder bit for bit, for a ResNet
(the tiny recipe, trained here) and a ViT (the committed iBOT run folder); a model card; the backbones timm
cannot rebuild refused with the reason; ``--push`` uploading exactly the folder (the Hub call mocked)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import yaml
from timm.data import resolve_data_config
from torch import nn

import clrun
from clrun.cli import main as cl_run_main
from clrun.commands.encoder_source import open_source
from clrun.commands.hub_folder import describe
from clrun.export import load_encoder

pytestmark = [pytest.mark.usefixtures("cli_uses_session_registry"),
              pytest.mark.filterwarnings("ignore:masking.project_tokens is deprecated")]  # the old iBOT run's recipe

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
OLD_VIT_RUN = Path(__file__).parents[1] / "fixtures" / "ibot_tiny_run"  # a ViT: patch 4, 16 px, dynamic size


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, reports_skipped) -> clrun.Run:
    recipe = clrun.load_recipe(TINY, [f"run.dir={tmp_path_factory.mktemp('runs')}", "run.name=gray",
                                      "data.dataset.channels=1", "backbone.in_chans=1", "data.mean=[0.3]",
                                      "data.std=[0.4]", "health.enabled=false"])
    with reports_skipped():
        run = clrun.train(recipe)
    run.network.eval()
    return run


def cl_run(capsys, *args) -> tuple[int, str, str]:
    code = cl_run_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@torch.no_grad()
def same_features(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> bool:
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    return torch.equal(a.eval()(x), b.eval()(x))


def test_a_resnet_folder_loads_in_timm_bit_for_bit_with_its_preprocessing(resnet_run, tmp_path, capsys):
    folder = tmp_path / "hub"
    code, out, err = cl_run(capsys, "export", resnet_run.directory, "--hub-folder", folder)
    assert (code, out) == (0, f"hub folder: {folder}\n"), err
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert model.num_classes == 0
    assert same_features(model, resnet_run.encoder, (1, 32, 32))
    assert not same_features(timm.create_model("test_resnet", num_classes=0, in_chans=1), resnet_run.encoder, (1, 32, 32))
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in resolve_data_config({}, model=model).items()}
    assert data == {"input_size": (1, 32, 32), "interpolation": "bilinear", "mean": (0.3,), "std": (0.4,), "crop_pct": 1.0,
                    "crop_mode": "center"}
    config = json.loads((folder / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["num_features"]) == ("test_resnet", 0, 96)
    assert config["model_args"]["in_chans"] == 1
    assert {"tag": "clrun", "license": "other", "input_size": [1, 32, 32], "mean": [0.3], "std": [0.4]}.items() \
        <= config["pretrained_cfg"].items()
    assert load_encoder(folder / "model.safetensors") is not None  # cl-run reads it as its encoder file


def test_a_vit_folder_loads_in_timm_bit_for_bit(tmp_path, capsys):
    run = Path(shutil.copytree(OLD_VIT_RUN, tmp_path / "ibot"))
    folder = tmp_path / "hub"
    assert cl_run(capsys, "export", run, "--hub-folder", folder, "--license", "cc-by-4.0")[0] == 0
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    trained = open_source(run, torch.device("cpu"), "test").run.network.backbone  # the checkpoint's own backbone
    assert same_features(model, trained, (3, 16, 16))
    assert same_features(model, trained, (3, 24, 24))  # dynamic_img_size came along
    config = json.loads((folder / "config.json").read_text())
    assert {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "dynamic_img_size": True}.items() \
        <= config["model_args"].items()
    assert "pretext_mask_token" not in model.state_dict()  # pre-training scaffolding stays out

    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front == {"license": "cc-by-4.0", "library_name": "timm", "pipeline_tag": "image-feature-extraction",
                     "tags": ["cl-run", "self-supervised", "image-feature-extraction", "timm"]}
    assert f'timm.create_model("local-dir:{folder.resolve()}", pretrained=True)' in card
    assert "| knn_top1 | 43.75% | 43.75% |" in card  # the run's final evaluation
    assert "loss `clrun/ibot`, projector `clrun/dino_head`, a momentum target" in card
    assert "these weights after epoch 1, step 3, batch 8 per process" in card
    assert (run / "recipe.yaml").read_text().rstrip() in card


def test_backbones_timm_cannot_rebuild_are_refused_with_the_reason():
    stem = clrun.create("backbone", "timm/resnet18", in_chans=1, small_image_stem=True)
    with pytest.raises(clrun.UserError) as err:
        stem.hub_config(size=[32, 32], mean=[0.0], std=[1.0], license="other")
    assert str(err.value).startswith("timm/resnet18 with small_image_stem: true cannot be written as a timm model "
                                     "folder: its stem (a 3x3 stride-1 first convolution, no max-pool) is cl-run's change")
    assert "clrun.export.load_encoder" in str(err.value)

    plugin_backbone = SimpleNamespace(run=SimpleNamespace(network=SimpleNamespace(backbone=nn.Linear(2, 2))),
                                      recipe=SimpleNamespace(backbone=SimpleNamespace(name="timm/test_resnet")))
    with pytest.raises(clrun.UserError) as err:
        describe(plugin_backbone, size=[8, 8], mean=[0.0], std=[1.0], license="other")
    assert str(err.value).startswith("export --hub-folder: backbone timm/test_resnet (from clrun.plugins.backbones")
    assert "offers no hub_config()" in str(err.value) and "clrun.export.load_encoder" in str(err.value)


def test_push_uploads_the_folder_and_no_token(resnet_run, tmp_path, capsys, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_from_the_environment")
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id, url=f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        folder = Path(kwargs["folder_path"])
        calls.append(("files", {p.name: p.read_bytes() for p in folder.iterdir()}))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    folder = tmp_path / "hub"
    code, out, err = cl_run(capsys, "export", resnet_run.directory, "--hub-folder", folder, "--push", "me/gray-encoder")
    assert (code, out) == (0, f"hub folder: {folder}\nuploaded: https://huggingface.co/me/gray-encoder\n"), err
    (_, repo, create), (_, repo_again, upload), (_, files) = calls
    assert (repo, repo_again, create["exist_ok"], create["repo_type"]) == ("me/gray-encoder",) * 2 + (True, "model")
    assert upload["folder_path"] == str(folder)
    assert files == {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert not any(b"hf_secret_token" in data for data in files.values())
    assert 'timm.create_model("hf-hub:me/gray-encoder", pretrained=True)' in files["README.md"].decode()

    def offline(self, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(HfApi, "upload_folder", offline)
    code, _, err = cl_run(capsys, "export", resnet_run.directory, "--hub-folder", folder, "--push", "me/gray-encoder")
    assert (code, err) == (2, f"cl-run: error: export --push: uploading {folder} to me/gray-encoder failed "
                              f"(ConnectionError: no route to huggingface.co); the folder is complete: check HF_TOKEN (a "
                              f"write token) and the repository name, then upload it with `hf upload me/gray-encoder "
                              f"{folder}` or run the export with --push again\n")


def test_option_errors(resnet_run, tmp_path, capsys):
    code, _, err = cl_run(capsys, "export", resnet_run.directory, "--push", "me/x")
    assert (code, err) == (2, "cl-run: error: export: --push, --private and --license go with --hub-folder DIR "
                              "(the folder to write and upload)\n")
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cl_run(capsys, "export", resnet_run.directory, "--hub-folder", tmp_path)
    assert (code, err) == (2, f"cl-run: error: export --hub-folder: {tmp_path} holds other files (notes.txt); give a new "
                              f"or empty folder (or an earlier hub folder, which holds only model.safetensors, "
                              f"config.json, README.md)\n")
