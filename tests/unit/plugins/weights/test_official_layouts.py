"""The official checkpoints' layouts (clrun.plugins.weights.official) on tiny files made by the official code
(tests/fixtures/official_weights, make_fixtures.py): each recognized by its layout alone, its networks, the
tensors of each part, and the key maps proven by outputs: a timm ViT loaded with a layout's backbone (through
timm's checkpoint filter, strict) and cl-run's heads loaded with its heads give the official models' outputs,
stored in expected.pt (the official repositories are not needed here)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from clrun import Masks, Tokens
from clrun.plugins.heads.dino_head import DINOHead
from clrun.plugins.heads.mlp import MLPProjector, mlp_predictor
from clrun.plugins.heads.token_heads import JEPAPredictor, MAEDecoder
from clrun.plugins.weights import components
from clrun.plugins.weights.official import (DINOLayout, DINOv2Layout, IBOTLayout, IJEPALayout, MAELayout,
                                            MoCoV3Layout)
from clrun.weights.files import read_file
from clrun.weights.layout import PARTS, Trained, WeightsFile, WeightsLayout

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "official_weights"
LAYOUTS = {"clrun/dino": DINOLayout(), "clrun/ibot": IBOTLayout(), "clrun/dinov2": DINOv2Layout(),
           "clrun/mae": MAELayout(), "clrun/ijepa": IJEPALayout(), "clrun/mocov3": MoCoV3Layout()}
# fixture -> (its layout, its networks, the timm ViT options of its backbone)
CASES = {
    "dino_checkpoint": ("clrun/dino", ("teacher", "student"), {}),
    "ibot_checkpoint": ("clrun/ibot", ("teacher", "student"), {}),
    "dinov2_train_full": ("clrun/dinov2", ("teacher", "student"), {"init_values": 1e-5}),
    "dinov2_teacher_checkpoint": ("clrun/dinov2", ("teacher",), {"init_values": 1e-5}),
    "dinov2_hub_reg4": ("clrun/dinov2", ("model",), {"init_values": 1e-5, "reg_tokens": 4, "no_embed_class": True}),
    "mae_checkpoint": ("clrun/mae", ("model",), {}),
    "ijepa_checkpoint": ("clrun/ijepa", ("teacher", "student"),
                         {"class_token": False, "global_pool": "avg", "fc_norm": False}),  # timm's I-JEPA ViTs
    "mocov3_checkpoint": ("clrun/mocov3", ("student", "teacher"), {}),
}
# The fixtures' tiny models (make_fixtures.py): 28 px images of 7 px patches, width 16, depth 2, 2 heads.
VIT = dict(img_size=28, patch_size=7, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2, num_classes=0)
NOT_IN_TIMM = {"masked_embed"}  # iBOT's student's mask token: timm's ViT has none (cl-run's is pretext_mask_token)


def read(path: Path) -> WeightsFile:
    return read_file(path, "test")  # cl-run's own reader: no unpickling, argparse.Namespace read as data


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is fastest (threads wait for each other on shared cores); as under xdist."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files() -> dict[str, WeightsFile]:
    return {name: read(FIXTURES / f"{name}.pth") for name in CASES}


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURES / "expected.pt", map_location="cpu", weights_only=True)


def test_the_components_offer_the_layouts():
    from clrun.weights.own_layouts import OWN_LAYOUTS

    offered = {c.name: c for c in components.clrun_components()}
    assert set(offered) == set(LAYOUTS) | set(OWN_LAYOUTS)
    for name, component in offered.items():
        if name in OWN_LAYOUTS:
            assert type(component.factory()) is OWN_LAYOUTS[name]
            continue
        assert component.kind == "weights_layout"
        layout = component.factory()
        assert isinstance(layout, WeightsLayout) and type(layout) is type(LAYOUTS[name])


@pytest.mark.parametrize("fixture", CASES)
def test_each_file_is_recognized_by_its_layout_alone(files, fixture):
    assert [name for name, layout in LAYOUTS.items() if layout.recognizes(files[fixture])] == [CASES[fixture][0]]


def test_plain_released_backbones_are_left_to_the_generic_layout(files):
    """DINO's and iBOT's released backbones, MAE's released encoder, a timm-converted DINOv2: no family's."""
    dino = LAYOUTS["clrun/dino"].parts(files["dino_checkpoint"], "teacher")["backbone"]
    ibot = LAYOUTS["clrun/ibot"].parts(files["ibot_checkpoint"], "student")["backbone"]
    mae = LAYOUTS["clrun/mae"].parts(files["mae_checkpoint"], "model")["backbone"]
    hub = dict(files["dinov2_hub_reg4"].content)
    timm_dinov2 = checkpoint_filter_fn(dict(hub), timm.create_model(
        "vit_tiny_patch16_224", **VIT, **CASES["dinov2_hub_reg4"][2]))
    plain = [dino, {"state_dict": ibot}, {"model": mae}, {"model": {"module." + k: v for k, v in mae.items()}},
             timm_dinov2, {**hub, "head.weight": torch.zeros(2, 16)}, {**hub, "mask_token": torch.zeros(1, 1, 16)}]
    for content in plain:
        file = WeightsFile(source="plain", path=Path("plain.pth"), content=content)
        assert [name for name, layout in LAYOUTS.items() if layout.recognizes(file)] == []


@pytest.mark.parametrize("fixture", CASES)
def test_networks_and_tensors_per_part(files, expected, fixture):
    layout, networks, _ = CASES[fixture]
    layout, file = LAYOUTS[layout], files[fixture]
    assert layout.networks(file) == networks
    for network in networks:
        parts = layout.parts(file, network)
        assert set(parts) <= set(PARTS)
        assert {part: len(tensors) for part, tensors in parts.items()} == expected[fixture]["counts"][network]
        assert not any(re.match(r"(module|backbone|base_encoder)\.|blocks\.\d+\.\d+\.", name)
                       for name in parts["backbone"])  # no wrapper prefixes, no FSDP block chunks
    with pytest.raises(ValueError, match="holds the networks"):
        layout.parts(file, "nobody")


@pytest.mark.parametrize("fixture", CASES)
def test_backbone_gives_the_official_output_in_timm(files, expected, fixture):
    layout, networks, options = CASES[fixture]
    images = expected["images"]
    for network in networks:
        model = timm.create_model("vit_tiny_patch16_224", **VIT, **options).eval()
        backbone = LAYOUTS[layout].parts(files[fixture], network)["backbone"]
        state = checkpoint_filter_fn({k: v for k, v in backbone.items() if k not in NOT_IN_TIMM}, model)
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            tokens = model.forward_features(images)
        official = expected[fixture]["backbone"][network]
        assert tokens.shape == official.shape
        torch.testing.assert_close(tokens, official, atol=1e-5, rtol=0, msg=f"{fixture} {network}")


def _loaded(head: nn.Module, tensors: dict) -> nn.Module:
    head.load_state_dict(tensors, strict=True)
    return head.eval()


@pytest.mark.parametrize("fixture", ["dino_checkpoint", "ibot_checkpoint", "dinov2_train_full",
                                     "dinov2_teacher_checkpoint"])
def test_dino_head_gives_the_official_output(files, expected, fixture):
    layout, networks, _ = CASES[fixture]
    for network in networks:
        tensors = LAYOUTS[layout].parts(files[fixture], network)["projector"]
        head = _loaded(DINOHead(in_dim=16, out_dim=32, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False), tensors)
        gains = head.last_layer.parametrizations.weight.original0
        assert gains.shape == (32, 1) and not torch.allclose(gains, torch.ones_like(gains))  # trained g, mapped
        case = expected[fixture]["projector"][network]
        with torch.no_grad():
            torch.testing.assert_close(head(case["input"]), case["output"], atol=1e-5, rtol=0)


def test_mocov3_projector_and_predictor_give_the_official_outputs(files, expected):
    layout, file, case = LAYOUTS["clrun/mocov3"], files["mocov3_checkpoint"], expected["mocov3_checkpoint"]
    for network in ("student", "teacher"):
        projector = _loaded(MLPProjector(in_dim=16, hidden_dim=16, out_dim=32, num_layers=3, last_batch_norm=True),
                            layout.parts(file, network)["projector"])
        with torch.no_grad():
            torch.testing.assert_close(projector(case["projector"][network]["input"]),
                                       case["projector"][network]["output"], atol=1e-5, rtol=0)
    predictor = _loaded(mlp_predictor(in_dim=32, hidden_dim=16, num_layers=2, last_batch_norm=True),
                        layout.parts(file, "student")["predictor"])
    with torch.no_grad():
        torch.testing.assert_close(predictor(case["predictor"]["student"]["input"]),
                                   case["predictor"]["student"]["output"], atol=1e-5, rtol=0)


def _tokens_and_masks(case: dict) -> tuple[Tokens, Masks]:
    visible, targets = case["visible"], case["targets"]
    tokens = Tokens(prefix=case["prefix"], patches=case["patches"], grid=(4, 4), pooled=case["patches"].mean(1))
    masks = Masks(visible=visible, targets=targets, visible_count=int(visible[0].sum()),
                  target_count=int(targets[0, 0].sum()))
    return tokens, masks


def test_mae_decoder_gives_the_official_output(files, expected):
    tensors = LAYOUTS["clrun/mae"].parts(files["mae_checkpoint"], "model")["token_head"]
    head = _loaded(MAEDecoder(token_dim=16, patch_pixels=3 * 7 * 7, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2),
                   tensors)
    case = expected["mae_checkpoint"]["token_head"]["model"]
    with torch.no_grad():
        torch.testing.assert_close(head(*_tokens_and_masks(case)), case["output"], atol=1e-5, rtol=0)


def test_jepa_predictor_gives_the_official_output(files, expected):
    tensors = LAYOUTS["clrun/ijepa"].parts(files["ijepa_checkpoint"], "student")["token_head"]
    head = _loaded(JEPAPredictor(token_dim=16, embed_dim=16, depth=2, num_heads=2, mlp_ratio=4), tensors)
    case = expected["ijepa_checkpoint"]["token_head"]["student"]
    with torch.no_grad():
        torch.testing.assert_close(head(*_tokens_and_masks(case)), case["output"], atol=1e-5, rtol=0)


def test_mocov3_resnet_heads_map_to_clrun_mlps():
    """MoCo v3's ResNet-50 layout (moco/builder.py:99-109): the projector is the encoder's ``fc``, 2 layers
    with an output BatchNorm; the predictor ends without one. Built here as _build_mlp builds them."""
    torch.manual_seed(0)

    def build_mlp(last_bn: bool) -> nn.Sequential:  # moco/builder.py:36-53 with num_layers=2
        layers = [nn.Linear(8, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 8, bias=False)]
        return nn.Sequential(*layers, *([nn.BatchNorm1d(8, affine=False)] if last_bn else []))

    fc, predictor = build_mlp(True), build_mlp(False)
    for mlp in (fc, predictor):
        mlp.train()(torch.randn(16, 8))  # running statistics
        mlp.eval()
    encoder = {"conv1.weight": torch.randn(4, 3, 3, 3), **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
    state = {f"module.{network}.{k}": v for network in ("base_encoder", "momentum_encoder") for k, v in encoder.items()}
    state.update({f"module.predictor.{k}": v for k, v in predictor.state_dict().items()})
    file = WeightsFile(source="r50", path=Path("r50.pth.tar"),
                       content={"epoch": 100, "arch": "resnet50", "state_dict": state, "optimizer": {}, "scaler": {}})
    layout = LAYOUTS["clrun/mocov3"]
    assert [name for name, other in LAYOUTS.items() if other.recognizes(file)] == ["clrun/mocov3"]
    parts = layout.parts(file, "student")
    assert list(parts["backbone"]) == ["conv1.weight"]
    x = torch.randn(5, 8)
    with torch.no_grad():
        projector = _loaded(MLPProjector(in_dim=8, hidden_dim=6, out_dim=8, num_layers=2, last_batch_norm=True),
                            parts["projector"])
        torch.testing.assert_close(projector(x), fc(x))
        head = _loaded(mlp_predictor(in_dim=8, hidden_dim=6, num_layers=2), parts["predictor"])
        torch.testing.assert_close(head(x), predictor(x))
    assert layout.trained(file) == Trained(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), image_size=224,
                                           patch_size=None, register_tokens=None, licence="CC-BY-NC-4.0")


LICENCES = {"clrun/dino": "Apache-2.0", "clrun/ibot": "Apache-2.0", "clrun/dinov2": "Apache-2.0",
            "clrun/mae": "CC-BY-NC-4.0", "clrun/ijepa": "CC-BY-NC-4.0", "clrun/mocov3": "CC-BY-NC-4.0"}


@pytest.mark.parametrize("fixture", CASES)
def test_trained_settings(files, fixture):
    layout = CASES[fixture][0]
    assert LAYOUTS[layout].trained(files[fixture]) == Trained(
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), image_size=28, patch_size=7,
        register_tokens=4 if fixture == "dinov2_hub_reg4" else 0, licence=LICENCES[layout])


def test_dinov2_hub_backbone_is_the_file_itself(files):
    file = files["dinov2_hub_reg4"]
    backbone = LAYOUTS["clrun/dinov2"].parts(file, "model")["backbone"]
    assert backbone.keys() == file.content.keys() and {"mask_token", "register_tokens"} <= backbone.keys()
