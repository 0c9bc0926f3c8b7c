"""Tokens from any timm VisionTransformer, composed from its own pieces (``patch_embed``, ``_pos_embed``,
``blocks``, ``norm``, ``forward_head``): no copy of timm's ViT code, so every ViT timm builds (class and
register tokens, dynamic image size, any depth) offers ``forward_tokens`` the same way."""

from __future__ import annotations

import types
from typing import Optional

import torch
from timm.models import checkpoint_seq
from torch import Tensor, nn

from clrun import Tokens, UserError

# The pieces forward_tokens composes; a timm model with all of them is a VisionTransformer in this sense.
PIECES = ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "forward_head", "num_prefix_tokens")


def is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, piece) for piece in PIECES)


def add_tokens(model: nn.Module, model_name: str, mask_token: bool) -> None:
    """Give a timm ViT ``forward_tokens`` (see ``clrun.tokens``) and, with ``mask_token``, the learned
    token that replaces hidden patches (initialized to zeros, as iBOT's ``masked_embed``). It is named
    ``pretext_mask_token``: only pre-training uses it, so the exported encoder leaves it out and loads
    into timm's plain model."""
    if not is_vit(model):
        if mask_token:
            raise UserError(f"timm/{model_name}: mask_token needs a vision transformer (patch tokens); "
                            f"this model has none. Pick a timm ViT, e.g. timm/vit_small_patch16_224")
        return
    if mask_token:
        model.pretext_mask_token = nn.Parameter(torch.zeros(model.embed_dim))
    model.forward_tokens = types.MethodType(forward_tokens, model)
    model.token_grid = types.MethodType(token_grid, model)
    last = model.blocks[-1] if len(model.blocks) else None
    attention = getattr(last, "attn", None)
    if model.num_prefix_tokens and hasattr(last, "norm1") and all(
            hasattr(attention, a) for a in ("qkv", "num_heads", "head_dim", "scale", "q_norm", "k_norm")):
        model.prefix_attention = types.MethodType(prefix_attention, model)


def token_grid(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The patch grid ``(rows, columns)`` of an image of ``height x width`` pixels."""
    if getattr(model, "dynamic_img_size", False):
        return tuple(model.patch_embed.dynamic_feat_size((height, width)))
    return tuple(model.patch_embed.grid_size)


def forward_tokens(model: nn.Module, images: Tensor, visible: Optional[Tensor] = None, drop: bool = False,
                   visible_index: Optional[Tensor] = None) -> Tokens:
    x = model.patch_embed(images)  # (B, rows, cols, D) with dynamic_img_size, else (B, L, D)
    grid = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(model.patch_embed.grid_size)
    batch, width = x.shape[0], x.shape[-1]
    if visible is not None and tuple(visible.shape) != (batch, grid[0] * grid[1]):
        raise ValueError(f"forward_tokens: visible must be ({batch}, {grid[0] * grid[1]}) for a {grid[0]} x {grid[1]} "
                         f"patch grid, got {tuple(visible.shape)}")
    if visible is not None and not drop:
        if getattr(model, "pretext_mask_token", None) is None:
            raise ValueError("forward_tokens: replacing hidden patches needs the backbone's mask token "
                             "(backbone option mask_token: true)")
        keep = visible.view(*x.shape[:-1], 1)
        x = torch.where(keep, x, model.pretext_mask_token.to(x.dtype))  # before the position embeddings, as iBOT
    x = model._pos_embed(x)  # prefix tokens and position embeddings: (B, P + L, D)
    prefix_count = model.num_prefix_tokens
    if visible is not None and drop:
        kept = visible_patches(visible) if visible_index is None else visible_index
        if kept.ndim != 2 or kept.shape[0] != batch:
            raise ValueError(f"forward_tokens: visible_index must be ({batch}, K), got {tuple(kept.shape)}")
        patches = x[:, prefix_count:].gather(1, kept.unsqueeze(-1).expand(-1, -1, width))
        x = torch.cat([x[:, :prefix_count], patches], dim=1)
    x = model.norm_pre(model.patch_drop(x))
    if getattr(model, "grad_checkpointing", False) and torch.is_grad_enabled():
        # train.activation_checkpointing: each block's activations recomputed in the backward pass, as timm's
        # forward_features does (through each block's forward, so sharding gathers its weights there too).
        x = checkpoint_seq(model.blocks, x)
    else:
        x = model.blocks(x)
    x = model.norm(x)
    return Tokens(prefix=x[:, :prefix_count], patches=x[:, prefix_count:], grid=grid,
                  pooled=model.forward_head(x, pre_logits=True))


def visible_patches(visible: Tensor) -> Tensor:
    """``(B, K)``: each image's visible patches in raster order, read from the mask for a caller that does not
    know them (``clrun.Masks.visible_index`` does, without the host syncs of this count check and ``nonzero``)."""
    counts = visible.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise ValueError("forward_tokens: dropping hidden patches needs the same visible count in every image; "
                         f"got {sorted(set(counts.tolist()))}")
    return visible.nonzero()[:, 1].view(visible.shape[0], -1)


def prefix_attention(model: nn.Module, images: Tensor) -> Tensor:
    """``(B, heads, rows * cols)``: how the first prefix token (the class token) attends to each patch in the
    last block, per head (softmax over all tokens, the prefix's columns left out): the attention maps
    DINO made famous. Computed from the block's own projections; timm's fused attention does not return
    its weights."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    x = model.blocks[:-1](x)
    last = model.blocks[-1]
    attn = last.attn
    batch, count, _ = x.shape
    qkv = attn.qkv(last.norm1(x)).reshape(batch, count, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, tokens)
    return weights[:, :, 0, model.num_prefix_tokens:]
