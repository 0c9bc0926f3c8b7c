"""Token heads: small transformers that, from a masked view's tokens, predict what is at the hidden patches.

A ``token_head`` component is called per masked view as ``head(tokens, masks)`` (``clrun.Tokens`` of the
online backbone, ``clrun.Masks`` drawn for the view) and returns ``(B, M, T, out)``: for each of the ``M``
target sets of each image, a prediction per target patch in raster order, aligned with
``masks.at_targets(...)`` of what it predicts. The loop injects ``token_dim`` (the backbone's token width)
and ``patch_pixels`` (channels x pixels of a global view's patch).

- ``MAEDecoder`` (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"): the encoded visible
  patches and a learned mask token at every hidden one, fixed 2-D sin-cos position embeddings, a few
  transformer blocks, a linear map to each patch's pixels.
- ``JEPAPredictor`` (Assran et al. 2023, I-JEPA): a narrow transformer over the context tokens plus one
  mask token per target patch (with that patch's position), run once per target block; it predicts the
  target encoder's token at each, mapped back to the encoder's width.

Both use timm's transformer ``Block`` (no copy of it here). The hidden patches may have been dropped from
the sequence (``masking.hidden: drop``: ``tokens.patches`` holds the visible ones) or replaced by the
backbone's mask token (every patch present).
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import Annotated

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from clrun import ComponentError, Masks, Range, Tokens, checked, name_of, sincos_position_embeddings

Count = Annotated[int, Range(min=1)]  # a width, a depth, a number of heads


def position_embeddings(grid: tuple[int, int], like: Tensor) -> Tensor:
    """``sincos_position_embeddings(grid, width)`` for tokens ``like`` (``(..., width)``): on their device, in
    their dtype. The table is made once per grid, width and device and kept there; built on the host and
    uploaded at every step, it would be a blocking copy per step."""
    return _table_on(tuple(grid), like.shape[-1], like.device).to(like.dtype)


@lru_cache(maxsize=16)  # a few grids per run (dynamic image sizes), each a few hundred kB
def _table_on(grid: tuple[int, int], dim: int, device: torch.device) -> Tensor:
    # Never an inference tensor (a first call under inference_mode): it joins training steps' graphs.
    with torch.inference_mode(False), torch.no_grad():
        return sincos_position_embeddings(grid, dim).to(device)


def _blocks(head: nn.Module, dim: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.Sequential:
    if dim % num_heads:
        raise ComponentError(f"{name_of(head)}: embed_dim ({dim}) must be divisible by num_heads ({num_heads})",
                             argument="embed_dim")
    if dim % 4:
        raise ComponentError(f"{name_of(head)}: embed_dim must be divisible by 4 (sin-cos position embeddings over rows "
                             f"and columns), got {dim}", argument="embed_dim")
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.Sequential(*(Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)))


def full_sequence(visible_tokens: Tensor, masks: Masks, mask_token: Tensor) -> Tensor:
    """``(B, L, E)``: the visible patches' tokens where they are, ``mask_token`` at the hidden patches.
    ``visible_tokens`` holds every patch (then the hidden ones' are replaced) or the visible ones only, in
    raster order (then they are scattered into place, by the index the masks know without a read)."""
    batch, length = masks.visible.shape
    blank = mask_token.to(visible_tokens.dtype).expand(batch, length, -1)
    if visible_tokens.shape[1] == length:
        return torch.where(masks.visible.unsqueeze(-1), visible_tokens, blank)
    index = masks.visible_index.unsqueeze(-1).expand(-1, -1, blank.shape[-1])
    return blank.scatter(1, index, visible_tokens)


class TokenTransformer(nn.Module):
    """What both heads are made of: a linear map from the backbone's tokens into the head's width, a learned
    mask token, ``depth`` transformer blocks, a final norm, and a linear map ``out`` to the output width."""

    def __init__(self, token_dim: int, out_dim: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        self.blocks = _blocks(self, embed_dim, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.out = nn.Linear(embed_dim, out_dim)


@checked
class MAEDecoder(TokenTransformer):
    """MAE's decoder. ``embed_dim``, ``depth`` and ``num_heads`` default to the paper's (512, 8, 16: its
    ViT-B/L/H decoder). The class and register tokens go through it too, with zero position embeddings
    (MAE's class token); the output is the prediction of every target patch's ``patch_pixels`` values."""

    def __init__(self, token_dim: Count, patch_pixels: Count,
                 embed_dim: Annotated[int, Range(min=4, hint="divisible by 4 and num_heads; MAE uses 512")] = 512,
                 depth: Annotated[int, Range(min=1, hint="MAE uses 8")] = 8,
                 num_heads: Annotated[int, Range(min=1, hint="MAE uses 16")] = 16,
                 mlp_ratio: Annotated[float, Range(min=0, exclusive_min=True, hint="MAE uses 4")] = 4.0) -> None:
        super().__init__(token_dim, patch_pixels, embed_dim, depth, num_heads, mlp_ratio)
        # MAE's initialization: xavier-uniform linear layers, zero biases, a N(0, 0.02) mask token.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tokens, masks: Masks) -> Tensor:
        prefix = self.embed(tokens.prefix)
        patches = full_sequence(self.embed(tokens.patches), masks, self.mask_token)
        patches = patches + position_embeddings(tokens.grid, patches)
        x = self.norm(self.blocks(torch.cat([prefix, patches], dim=1)))
        return masks.at_targets(self.out(x[:, prefix.shape[1]:]))


@checked
class JEPAPredictor(TokenTransformer):
    """I-JEPA's predictor. ``embed_dim`` and ``depth`` default to the paper's ViT-H/14 setting (384, 12;
    ``num_heads`` 12, the official code's). The context tokens and the position embeddings of the target
    patches go in; one pass per target block, as the official code batches them."""

    def __init__(self, token_dim: Count,
                 embed_dim: Annotated[int, Range(min=4, hint="divisible by 4 and num_heads; I-JEPA uses 384")] = 384,
                 depth: Annotated[int, Range(min=1, hint="I-JEPA uses 12")] = 12,
                 num_heads: Annotated[int, Range(min=1, hint="I-JEPA uses 12")] = 12,
                 mlp_ratio: Annotated[float, Range(min=0, exclusive_min=True, hint="I-JEPA uses 4")] = 4.0) -> None:
        super().__init__(token_dim, token_dim, embed_dim, depth, num_heads, mlp_ratio)
        # The official initialization: N(0, 0.02) weights (truncated), zero biases, and each block's output
        # projections scaled down by sqrt(2 * layer) so deeper blocks start closer to the identity.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        with torch.no_grad():
            for layer, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

    def forward(self, tokens: Tokens, masks: Masks) -> Tensor:
        batch, length = masks.visible.shape
        context = self.embed(tokens.patches)  # (B, K, E): the visible patches (or every patch)
        positions = position_embeddings(tokens.grid, context).expand(batch, length, -1)
        if context.shape[1] == length:
            context = context + positions
        else:  # the visible patches' positions, gathered by the index the masks know without a read
            context = context + positions.gather(1, masks.visible_index.unsqueeze(-1).expand(-1, -1, context.shape[-1]))
        queries = masks.at_targets(positions) + self.mask_token.to(context.dtype)  # (B, M, T, E)
        sets, count = queries.shape[1:3]
        context = context.unsqueeze(1).expand(-1, sets, -1, -1).flatten(0, 1)
        x = torch.cat([context, queries.flatten(0, 1)], dim=1)
        x = self.norm(self.blocks(x))[:, -count:]
        return self.out(x).view(batch, sets, count, -1)
