"""Initial weights of the parity tests' tiny DINO network, from a seed, in timm's layout (float64).

The backbone is timm's ``vit_tiny_patch16_224`` made tiny (28 px images of 7 px patches: a 4 x 4 grid, width 64,
depth 2, 2 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6, one input channel, no classifier). The head is
DINO's ``DINOHead`` (facebookresearch/dino vision_transformer.py) with in_dim 64, hidden 64, bottleneck 32,
out_dim K = 64, 3 layers, no BatchNorm, ``norm_last_layer``.

The values are drawn by NumPy (``numpy.random.default_rng(seed)``, float64), in the scales of timm's and DINO's
initializations, not by either: the weight matrices, the patch embedding, the position embeddings and the
head's Linear weights from a normal of std 0.02 clipped at +-2 std; the class token from a normal of std
1e-6; biases zero; LayerNorm scales one; the weight-normed last layer's direction ``weight_v`` uniform in
+-1/sqrt(32) (``nn.Linear``'s default) and its gains ``weight_g`` all 1 (fixed). Why not timm's own
initialization under ``torch.manual_seed``: torch draws a truncated normal through a vectorized ``erfinv``
whose float32 results depend on the CPU's instruction set (an AVX-512 machine's differ from an AVX2 one's in
the last bits), and the fixture's 1e-10 tolerance sees that. NumPy's generator and its normal (ziggurat) and
uniform draws are the same on every machine.

``initial_weights(seed)`` is a flat dict: ``backbone.<timm name>`` and ``head.<official DINOHead name>``
(``mlp.0/2/4.weight|bias``, ``last_layer.weight_g`` (K, 1), ``last_layer.weight_v`` (K, 32)). These are also the
official ``utils.MultiCropWrapper``'s names: for this configuration timm's ViT and the official
``vision_transformer.VisionTransformer`` name every tensor alike (``official_name`` checks that a name is one
of them). cl-run's ``clrun/dino_head`` keeps the weight norm as a parametrization: ``HEAD_TO_PARAMETRIZED``.

The fixture stores checksums of every initial tensor (``checksums``): a test checks the draw is the same.

    python tests/parity/weights.py --official /tmp/dino-official   # official ViT vs timm's on the same weights
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn

IMG, PATCH, EMBED, DEPTH, HEADS, MLP_RATIO = 28, 7, 64, 2, 2, 4.0
HIDDEN, BOTTLENECK, OUT_DIM, HEAD_LAYERS = 64, 32, 64, 3

TIMM_ARGS = dict(pretrained=False, img_size=IMG, patch_size=PATCH, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS,
                 in_chans=1, num_classes=0, dynamic_img_size=True)  # vit_tiny: mlp_ratio 4, qkv_bias True
TIMM_MODEL = "vit_tiny_patch16_224"

HEAD_TO_PARAMETRIZED = {  # official DINOHead (nn.utils.weight_norm) -> torch.nn.utils.parametrizations.weight_norm
    "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
    "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
}

_BACKBONE_NAMES = re.compile(
    r"^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))$")
_HEAD_NAMES = re.compile(r"^(mlp\.\d+\.(weight|bias)|last_layer\.weight_[gv])$")


def timm_backbone(dtype: torch.dtype = torch.float64) -> nn.Module:
    """The tiny timm ViT (its own initialization; load ``initial_weights`` into it)."""
    import timm

    return timm.create_model(TIMM_MODEL, **TIMM_ARGS).to(dtype)


def initial_weights(seed: int) -> dict[str, torch.Tensor]:
    """The initial student (= teacher) weights: ``backbone.<timm name>`` and ``head.<DINOHead name>``, float64,
    drawn by NumPy (the module's docstring says why and how)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def normal(shape, std: float = 0.02) -> torch.Tensor:
        return torch.from_numpy(np.clip(rng.standard_normal(shape), -2.0, 2.0) * std)

    def draw(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name == "cls_token":
            return torch.from_numpy(rng.standard_normal(shape) * 1e-6)
        if name.endswith(".bias"):
            return torch.zeros(shape, dtype=torch.float64)
        if re.search(r"(^|\.)norm\d?\.weight$", name):
            return torch.ones(shape, dtype=torch.float64)
        return normal(shape)

    shapes = {k: tuple(v.shape) for k, v in timm_backbone(torch.float32).state_dict().items()}
    weights = {f"backbone.{k}": draw(k, shape) for k, shape in shapes.items()}
    widths = [EMBED] + [HIDDEN] * (HEAD_LAYERS - 1) + [BOTTLENECK]
    for i in range(HEAD_LAYERS):  # Linear, GELU, Linear, GELU, Linear: Sequential indices 0, 2, 4
        weights[f"head.mlp.{2 * i}.weight"] = normal((widths[i + 1], widths[i]))  # DINO's trunc_normal_(std=.02)
        weights[f"head.mlp.{2 * i}.bias"] = torch.zeros(widths[i + 1], dtype=torch.float64)
    bound = 1.0 / BOTTLENECK ** 0.5  # nn.Linear's default init: kaiming_uniform_(a=sqrt(5))
    weights["head.last_layer.weight_v"] = torch.from_numpy(rng.uniform(-bound, bound, (OUT_DIM, BOTTLENECK)))
    weights["head.last_layer.weight_g"] = torch.ones(OUT_DIM, 1, dtype=torch.float64)
    for name in weights:
        official_name(name)
    return weights


def official_name(name: str) -> str:
    """A ``backbone.``/``head.`` name of ``initial_weights`` -> the official ``MultiCropWrapper``'s name (the
    same for this configuration; a timm tensor without an official counterpart raises)."""
    part, _, rest = name.partition(".")
    if (part == "backbone" and _BACKBONE_NAMES.match(rest)) or (part == "head" and _HEAD_NAMES.match(rest)):
        return name
    raise KeyError(f"{name}: no counterpart in the official DINO ViT/DINOHead")


def official_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``initial_weights`` in the official ``utils.MultiCropWrapper(VisionTransformer, DINOHead)`` names."""
    return {official_name(k): v.clone() for k, v in weights.items()}


def part(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` without it (``part(w, "backbone")`` loads into ``timm_backbone()``)."""
    return {k[len(prefix) + 1:]: v.clone() for k, v in weights.items() if k.startswith(prefix + ".")}


def checksums(tensor: torch.Tensor) -> list[float]:
    """[sum, sum of squares] in float64."""
    t = tensor.detach().to(torch.float64)
    return [float(t.sum()), float((t * t).sum())]


def official_resample_abs_pos_embed(posemb: torch.Tensor, new_size, old_size=None, num_prefix_tokens: int = 1,
                                    **_ignored) -> torch.Tensor:
    """The official ``VisionTransformer.interpolate_pos_encoding`` (vision_transformer.py) with the signature of
    timm's ``resample_abs_pos_embed``: bicubic ``F.interpolate`` with ``scale_factor = (new + 0.1) / old``
    (not ``size``), no antialiasing, in the embeddings' dtype; unchanged when the grid is the same (the
    official returns ``pos_embed`` when the token counts match and the image is square). One class token, a
    square old grid. ``patch("timm.models.vision_transformer.resample_abs_pos_embed", this)`` makes a timm
    ViT with ``dynamic_img_size`` compute what the official one does."""
    assert num_prefix_tokens == 1
    n = posemb.shape[1] - 1
    side = int(math.sqrt(n))
    if tuple(new_size) == (side, side):
        return posemb
    grid = posemb[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    h0, w0 = new_size[0] + 0.1, new_size[1] + 0.1
    grid = nn.functional.interpolate(grid, scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)), mode="bicubic")
    assert tuple(grid.shape[-2:]) == tuple(new_size)
    return torch.cat((posemb[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, posemb.shape[-1])), dim=1)


# --------------------------------------------------------------------------------- official model, comparison
def official_backbone(vits, drop_path_rate: float = 0.0, **options) -> nn.Module:
    """The official ``vision_transformer.VisionTransformer`` (``vits``: the imported official module) made as its
    ``vit_tiny`` is (mlp_ratio 4, qkv_bias, LayerNorm eps 1e-6), tiny, one channel. ``options``: the model's
    other arguments (iBOT's ``models.VisionTransformer``, DINO's copy: ``return_all_tokens``,
    ``masked_im_modeling``)."""
    return vits.VisionTransformer(img_size=[IMG], patch_size=PATCH, in_chans=1, embed_dim=EMBED, depth=DEPTH,
                                  num_heads=HEADS, mlp_ratio=MLP_RATIO, qkv_bias=True,
                                  norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=drop_path_rate,
                                  **options)


def official_head(vits, norm_last_layer: bool = True, use_bn: bool = False) -> nn.Module:
    return vits.DINOHead(EMBED, OUT_DIM, use_bn=use_bn, norm_last_layer=norm_last_layer, nlayers=HEAD_LAYERS,
                         hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK)


def compare_with_official(vits, weights: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> dict:
    """Max |official - timm| of the CLS token after the final norm, per named input batch (float64), both
    models holding ``weights`` (also with timm's resampling replaced by ``official_resample_abs_pos_embed``);
    and of the position embeddings each resamples for a 2 x 2 grid (14 px)."""
    official = official_backbone(vits).to(torch.float64).eval()
    official.load_state_dict(part(weights, "backbone"))
    timm_model = timm_backbone().eval()
    timm_model.load_state_dict(part(weights, "backbone"))
    import timm.models.vision_transformer as timm_vit

    result = {}
    with torch.no_grad():
        for name, x in inputs.items():
            a = official(x)
            b = timm_model.forward_features(x)[:, 0]
            timm_resample, timm_vit.resample_abs_pos_embed = (timm_vit.resample_abs_pos_embed,
                                                              official_resample_abs_pos_embed)
            try:
                c = timm_model.forward_features(x)[:, 0]
            finally:
                timm_vit.resample_abs_pos_embed = timm_resample
            result[name] = {"max_abs_diff": float((a - b).abs().max()), "max_abs_value": float(a.abs().max()),
                            "max_abs_diff_timm_with_official_resampling": float((a - c).abs().max()),
                            "shape": list(x.shape)}
        from timm.layers import resample_abs_pos_embed

        probe = torch.zeros(1, 1 + 4, EMBED, dtype=torch.float64)
        pe_official = official.interpolate_pos_encoding(probe, 14, 14)
        pe_timm = resample_abs_pos_embed(timm_model.pos_embed, new_size=(2, 2), old_size=(4, 4), num_prefix_tokens=1)
        result["pos_embed_14px"] = {"max_abs_diff": float((pe_official - pe_timm).abs().max()),
                                    "max_abs_value": float(pe_official.abs().max())}
        # What the official resampling is: F.interpolate with scale_factor (2 + 0.1) / 4, not size=(2, 2);
        # timm's is size=(2, 2) with antialias=True in float32. Without antialias timm's still differs.
        grid = timm_model.pos_embed[:, 1:].reshape(1, 4, 4, EMBED).permute(0, 3, 1, 2)
        candidates = {
            "scale_factor_0.525_bicubic": nn.functional.interpolate(grid, scale_factor=(2.1 / 4, 2.1 / 4),
                                                                    mode="bicubic"),
            "size_2_bicubic_no_antialias": nn.functional.interpolate(grid, size=(2, 2), mode="bicubic"),
        }
        for name, resampled in candidates.items():
            resampled = resampled.permute(0, 2, 3, 1).reshape(1, 4, EMBED)
            result["pos_embed_14px"][f"max_abs_diff_to_{name}"] = float((pe_official[:, 1:] - resampled).abs().max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a tree of facebookresearch/dino")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(args.official.resolve()))
    import vision_transformer as vits  # the official one (it imports the official utils)

    weights = initial_weights(args.seed)
    g = torch.Generator().manual_seed(1)
    inputs = {"28px": torch.randn(8, 1, 28, 28, generator=g, dtype=torch.float64),
              "14px": torch.randn(8, 1, 14, 14, generator=g, dtype=torch.float64)}
    for name, value in compare_with_official(vits, weights, inputs).items():
        print(name, value)


if __name__ == "__main__":
    main()
