"""Initial weights of the parity tests' tiny I-JEPA, from a seed drawn by NumPy, in the official names (float64).

The model is the official ``src/models/vision_transformer.py`` (facebookresearch/ijepa) made tiny (``MODEL``):
the context encoder ``VisionTransformer`` as its ``vit_tiny`` is built (MLP ratio 4, qkv bias, LayerNorm eps 1e-6)
but 28 px, 4 px patches (a 7 x 7 grid, 49 patches, no class token), one channel, width 64, depth 2, 2 heads; the
predictor ``VisionTransformerPredictor`` as ``vit_predictor`` builds it (``init_model``: the encoder's width and
head count), width 32, depth 1. The target encoder starts as the context encoder (``copy.deepcopy``).

The values are drawn by NumPy (``numpy.random.default_rng(seed)``, float64) in the scales of the official
initialization, not by it: every Linear and the patch Conv2d weight, and the predictor's ``mask_token``, a normal
of std 0.02 clipped at +-2 std (``trunc_normal_(std=0.02)``); each block's ``attn.proj`` and ``mlp.fc2`` weights
then divided by ``sqrt(2 * layer)`` (``fix_init_weight``, layers from 1); biases 0; LayerNorm weights 1, biases 0.
Why not the official initialization under ``torch.manual_seed``: ``trunc_normal_`` draws through ``erfinv_``,
whose vectorized results differ in the last bits between CPUs (README.md, "What moves the fixture"), which the
1e-10 tolerance sees. The two position tables are not drawn: they are the official fixed 2-D sin-cos tables
(``get_2d_sincos_pos_embed``, float64 rounded to float32 by the official ``.float()``), ``pos_embed`` (1, 49, 64)
and ``predictor_pos_embed`` (1, 49, 32), with no class-token row; ``make_ijepa.py`` checks them bit for bit
against the official model's own.

    weights = initial_weights(0)       # {"encoder": {...}, "predictor": {...}}: official names, state_dict order
    checkpoint = official_checkpoint(weights)   # src/train.py's save_dict: what clrun/ijepa reads
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.parity import mae_weights  # noqa: E402

IMG, PATCH, IN_CHANS = 28, 4, 1
EMBED, DEPTH, HEADS = 64, 2, 2
PRED_EMBED, PRED_DEPTH = 32, 1  # pred_emb_dim, pred_depth; the predictor's heads: the encoder's (init_model)
MLP_RATIO = 4.0
LN_EPS = 1e-6
GRID = IMG // PATCH  # 7
NUM_PATCHES = GRID * GRID  # 49
MODEL = dict(img_size=IMG, patch_size=PATCH, in_chans=IN_CHANS, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS,
             mlp_ratio=MLP_RATIO, qkv_bias=True)  # plus norm_layer=partial(nn.LayerNorm, eps=LN_EPS)
PREDICTOR = dict(num_patches=NUM_PATCHES, embed_dim=EMBED, predictor_embed_dim=PRED_EMBED, depth=PRED_DEPTH,
                 num_heads=HEADS)  # vit_predictor's other arguments: mlp_ratio 4, qkv_bias, LayerNorm eps 1e-6
FIXED = {"encoder": ("pos_embed",), "predictor": ("predictor_pos_embed",)}  # requires_grad=False: not trained
FIXED_NAMES = frozenset(FIXED["encoder"] + FIXED["predictor"])  # the target encoder's table is "pos_embed" too
STD = 0.02

# A block's tensors in state_dict order: LayerNorms as "ln", Linears as (out, in) in multiples of the width.
_BLOCK = (("norm1", "ln"), ("attn.qkv", (3, 1)), ("attn.proj", (1, 1)), ("norm2", "ln"), ("mlp.fc1", (4, 1)),
          ("mlp.fc2", (1, 4)))


def sincos_table(dim: int) -> torch.Tensor:
    """(1, 49, dim) float64 holding float32-rounded values: the official ``get_2d_sincos_pos_embed(dim, 7)``
    (no class token) after ``.float()``; the first half of the channels encodes the column. The same table as
    MAE's without its class-token row (MAE's grid is float32, I-JEPA's float64: integer coordinates either way)."""
    return mae_weights.sincos_pos_embed(dim, GRID)[:, 1:]


def _shapes(prefix: str, dim: int) -> list[tuple[str, tuple[int, ...]]]:
    """A block's tensors, in ``state_dict`` order: ``prefix`` (``blocks.0.``), its width ``dim``."""
    out = []
    for name, kind in _BLOCK:
        if kind == "ln":
            out += [(f"{prefix}{name}.weight", (dim,)), (f"{prefix}{name}.bias", (dim,))]
        else:
            rows, cols = int(kind[0] * dim), int(kind[1] * dim)  # MLP ratio 4
            out += [(f"{prefix}{name}.weight", (rows, cols)), (f"{prefix}{name}.bias", (rows,))]
    return out


def encoder_shapes() -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("pos_embed", (1, NUM_PATCHES, EMBED)), ("patch_embed.proj.weight", (EMBED, IN_CHANS, PATCH, PATCH)),
              ("patch_embed.proj.bias", (EMBED,))]
    for i in range(DEPTH):
        shapes += _shapes(f"blocks.{i}.", EMBED)
    return shapes + [("norm.weight", (EMBED,)), ("norm.bias", (EMBED,))]


def predictor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("mask_token", (1, 1, PRED_EMBED)), ("predictor_pos_embed", (1, NUM_PATCHES, PRED_EMBED)),
              ("predictor_embed.weight", (PRED_EMBED, EMBED)), ("predictor_embed.bias", (PRED_EMBED,))]
    for i in range(PRED_DEPTH):
        shapes += _shapes(f"predictor_blocks.{i}.", PRED_EMBED)
    return shapes + [("predictor_norm.weight", (PRED_EMBED,)), ("predictor_norm.bias", (PRED_EMBED,)),
                     ("predictor_proj.weight", (EMBED, PRED_EMBED)), ("predictor_proj.bias", (EMBED,))]


def initial_weights(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """``{"encoder": state, "predictor": state}``: the official names, shapes and ``state_dict`` order, float64,
    drawn by NumPy (the module's docstring says how), encoder first, each tensor in order."""
    rng = np.random.default_rng(seed)

    def draw(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name == "pos_embed":
            return sincos_table(EMBED)
        if name == "predictor_pos_embed":
            return sincos_table(PRED_EMBED)
        if name.endswith(".bias"):
            return torch.zeros(shape, dtype=torch.float64)
        if "norm" in name:  # LayerNorm weights (norm1, norm2, norm, predictor_norm)
            return torch.ones(shape, dtype=torch.float64)
        value = np.clip(rng.standard_normal(shape), -2.0, 2.0) * STD
        layer = _layer(name)
        if layer is not None and name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
            value = value / np.sqrt(2.0 * layer)  # fix_init_weight
        return torch.from_numpy(value)

    return {"encoder": {n: draw(n, s) for n, s in encoder_shapes()},
            "predictor": {n: draw(n, s) for n, s in predictor_shapes()}}


def _layer(name: str) -> int | None:
    """The block's layer id counted from 1 (``fix_init_weight``'s), or None outside a block."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("blocks", "predictor_blocks"):
            return int(parts[i + 1]) + 1
    return None


def official_checkpoint(weights: dict[str, dict[str, torch.Tensor]]) -> dict:
    """The initial state as src/train.py's ``save_checkpoint`` writes it (``save_dict``, train.py:249-260): each
    network DDP-wrapped (``module.``), the target encoder equal to the encoder (``copy.deepcopy``), epoch 0,
    no optimizer state. What cl-run's ``clrun/ijepa`` weights layout reads."""
    def wrapped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"module.{k}": v.clone() for k, v in state.items()}

    return {"encoder": wrapped(weights["encoder"]), "predictor": wrapped(weights["predictor"]),
            "target_encoder": wrapped(weights["encoder"]), "opt": None, "scaler": None, "epoch": 0, "loss": 0.0,
            "batch_size": 8, "world_size": 1, "lr": 1e-3}


def checksums(tensor: torch.Tensor) -> list[float]:
    """[sum, sum of squares] in float64."""
    t = tensor.detach().to(torch.float64)
    return [float(t.sum()), float((t * t).sum())]


def abs_checksums(tensor: torch.Tensor) -> list[float]:
    """[sum of absolute values, sum of squares] in float64: for a tensor whose plain sum nearly cancels."""
    t = tensor.detach().to(torch.float64)
    return [float(t.abs().sum()), float((t * t).sum())]


if __name__ == "__main__":
    for network, state in initial_weights(0).items():
        print(network, len(state), "tensors,", sum(t.numel() for t in state.values()), "values")
        for name, t in state.items():
            print(f"  {name:40s} {tuple(t.shape)!s:16s} {checksums(t)}")
