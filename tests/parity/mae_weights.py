"""Initial weights of the parity tests' tiny MAE, from a seed, without the official code (float64).

The model is the official ``models_mae.MaskedAutoencoderViT`` (facebookresearch/mae) made tiny (``MODEL``):
28 px images of 4 px patches (a 7 x 7 grid, L = 49 patches), one channel, encoder width 64, depth 2, 2 heads,
decoder width 32, depth 1, 2 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6, ``norm_pix_loss``. Its weights
are what the official constructor and ``initialize_weights`` make under ``torch.manual_seed(seed)`` with
``torch.set_default_dtype(torch.float64)`` (main_pretrain.py seeds right before it builds the model). That
depends on every draw of the global generator, in order, so ``initial_weights`` makes the same draws:

1. construction (the draws are overwritten later, but they move the generator): ``patch_embed.proj`` as an
   ``nn.Conv2d(1, 64, 4, stride 4)`` (kaiming-uniform weight, uniform bias), then for each encoder block the
   Linears ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, then ``decoder_embed``, the decoder block's
   four Linears, ``decoder_pred``: each ``nn.Linear``'s default initialization (weight, then bias);
2. ``pos_embed`` and ``decoder_pos_embed``: the fixed 2-D sin-cos table (``sincos_pos_embed``; no draw), computed
   in float64 from a float32 grid and then **rounded to float32** (the official ``torch.from_numpy(...).float()``)
   before it is copied into the float64 parameter; row 0 (the class token's) is zero;
3. ``xavier_uniform_`` of ``patch_embed.proj.weight`` viewed as (64, 16) (as a Linear); its bias keeps the
   Conv2d default of step 1 (uniform in +-1/4: MAE never resets it);
4. ``normal_(std=0.02)`` of ``cls_token``, then of ``mask_token``;
5. ``xavier_uniform_`` of every Linear weight in module order (encoder blocks, ``decoder_embed``, decoder block,
   ``decoder_pred``), Linear biases 0, LayerNorm weight 1 and bias 0.

``make_mae.py`` checks that this is bit for bit the official model's initial state dict; the fixture stores
``[sum, sum of squares]`` of every initial tensor. Names are the official model's (they are also what timm
1.x's ``Block``/``PatchEmbed`` name their tensors).

    weights = initial_weights(0)   # {name: float64 tensor}: 50 tensors, 121,456 values (969 kB as float64)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

IMG, PATCH, IN_CHANS = 28, 4, 1
EMBED, DEPTH, HEADS = 64, 2, 2
DEC_EMBED, DEC_DEPTH, DEC_HEADS = 32, 1, 2
MLP_RATIO = 4.0
LN_EPS = 1e-6
GRID = IMG // PATCH  # 7
NUM_PATCHES = GRID * GRID  # 49
MODEL = dict(img_size=IMG, patch_size=PATCH, in_chans=IN_CHANS, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS,
             decoder_embed_dim=DEC_EMBED, decoder_depth=DEC_DEPTH, decoder_num_heads=DEC_HEADS, mlp_ratio=MLP_RATIO,
             norm_pix_loss=True)  # plus norm_layer=partial(nn.LayerNorm, eps=LN_EPS)

_BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _block_shapes(dim: int) -> list[tuple[str, int, int]]:
    hidden = int(dim * MLP_RATIO)
    return list(zip(_BLOCK_LINEARS, (dim, dim, dim, hidden), (3 * dim, dim, hidden, dim)))


def linear_layers() -> list[tuple[str, int, int]]:
    """(name, in, out) of every Linear, in the official module order (construction and ``apply``)."""
    out = []
    for i in range(DEPTH):
        out += [(f"blocks.{i}.{n}", a, b) for n, a, b in _block_shapes(EMBED)]
    out.append(("decoder_embed", EMBED, DEC_EMBED))
    for i in range(DEC_DEPTH):
        out += [(f"decoder_blocks.{i}.{n}", a, b) for n, a, b in _block_shapes(DEC_EMBED)]
    out.append(("decoder_pred", DEC_EMBED, PATCH * PATCH * IN_CHANS))
    return out


def layer_norms() -> list[tuple[str, int]]:
    out = []
    for i in range(DEPTH):
        out += [(f"blocks.{i}.norm1", EMBED), (f"blocks.{i}.norm2", EMBED)]
    out.append(("norm", EMBED))
    for i in range(DEC_DEPTH):
        out += [(f"decoder_blocks.{i}.norm1", DEC_EMBED), (f"decoder_blocks.{i}.norm2", DEC_EMBED)]
    out.append(("decoder_norm", DEC_EMBED))
    return out


def sincos_pos_embed(dim: int, grid: int = GRID) -> torch.Tensor:
    """(1, 1 + grid**2, dim) float64 holding float32-rounded values: row 0 zero (class token), then for the patch
    at row i, column j (row-major), ``[sin(j w), cos(j w), sin(i w), cos(i w)]`` with ``w_k = 10000**(-k / (dim/4))``,
    k < dim/4 (the first half of the channels encodes the column). As util/pos_embed.py's
    ``get_2d_sincos_pos_embed(dim, grid, cls_token=True)`` followed by ``.float()``."""
    assert dim % 4 == 0
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one_d(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    coords = np.arange(grid, dtype=np.float32)
    cols, rows = np.meshgrid(coords, coords)  # (grid, grid) each: column index, row index
    table = np.concatenate([one_d(cols), one_d(rows)], axis=1)
    table = np.concatenate([np.zeros([1, dim]), table], axis=0)
    return torch.from_numpy(table).float().to(torch.float64).unsqueeze(0)


def initial_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """The official tiny MAE's initial state dict (float64, official names, ``state_dict`` order), drawn from
    ``torch.manual_seed(seed)`` as the official code draws it; the global generator is left as it was."""
    dd = {"dtype": torch.float64}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # 1. construction draws
        patch = nn.Conv2d(IN_CHANS, EMBED, kernel_size=PATCH, stride=PATCH, **dd)
        linears = {name: nn.Linear(a, b, **dd) for name, a, b in linear_layers()}
        # 2. fixed position embeddings
        pos_embed, decoder_pos_embed = sincos_pos_embed(EMBED), sincos_pos_embed(DEC_EMBED)
        # 3. patch embedding as a Linear (bias untouched)
        nn.init.xavier_uniform_(patch.weight.data.view(EMBED, -1))
        # 4. tokens
        cls_token = torch.zeros(1, 1, EMBED, **dd)
        mask_token = torch.zeros(1, 1, DEC_EMBED, **dd)
        nn.init.normal_(cls_token, std=0.02)
        nn.init.normal_(mask_token, std=0.02)
        # 5. Linears, in module order
        for layer in linears.values():
            nn.init.xavier_uniform_(layer.weight.data)
            nn.init.constant_(layer.bias.data, 0)
    w = {n: torch.ones(d, **dd) for n, d in layer_norms()}
    b = {n: torch.zeros(d, **dd) for n, d in layer_norms()}
    L = {n: layer for n, layer in linears.items()}

    def lin(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": L[name].weight.detach().clone(), f"{name}.bias": L[name].bias.detach().clone()}

    def ln(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": w[name], f"{name}.bias": b[name]}

    def block(prefix: str) -> dict[str, torch.Tensor]:
        return {**ln(f"{prefix}.norm1"), **lin(f"{prefix}.attn.qkv"), **lin(f"{prefix}.attn.proj"),
                **ln(f"{prefix}.norm2"), **lin(f"{prefix}.mlp.fc1"), **lin(f"{prefix}.mlp.fc2")}

    # the model's own parameters first, then its modules' (state_dict and named_parameters order)
    state = {"cls_token": cls_token, "pos_embed": pos_embed, "mask_token": mask_token,
             "decoder_pos_embed": decoder_pos_embed,
             "patch_embed.proj.weight": patch.weight.detach().clone(),
             "patch_embed.proj.bias": patch.bias.detach().clone()}
    for i in range(DEPTH):
        state.update(block(f"blocks.{i}"))
    state.update(ln("norm"))
    state.update(lin("decoder_embed"))
    for i in range(DEC_DEPTH):
        state.update(block(f"decoder_blocks.{i}"))
    state.update(ln("decoder_norm"))
    state.update(lin("decoder_pred"))
    return state


FIXED = ("pos_embed", "decoder_pos_embed")  # requires_grad=False in the official model: not trained


def checksums(tensor: torch.Tensor) -> list[float]:
    """[sum, sum of squares] in float64."""
    t = tensor.detach().to(torch.float64)
    return [float(t.sum()), float((t * t).sum())]


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """Same names in the same order, and the largest |difference| over all tensors."""
    assert list(a) == list(b), (list(a), list(b))
    diff = max(float((a[k].to(torch.float64) - b[k].to(torch.float64)).abs().max()) for k in a)
    return {"same_names_and_order": True, "max_abs_diff": diff,
            "bitwise_equal": all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)}


if __name__ == "__main__":
    weights = initial_weights(0)
    print(len(weights), "tensors,", sum(t.numel() for t in weights.values()), "values")
    for name, t in weights.items():
        print(f"{name:40s} {tuple(t.shape)!s:16s} {checksums(t)}")
