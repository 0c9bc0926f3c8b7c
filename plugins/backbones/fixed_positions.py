"""A timm vision transformer's position embeddings as a fixed 2-D sine-cosine table, as MAE and I-JEPA have
them (backbone option ``sincos_pos_embed: true``), instead of timm's trained ones.

The table stays timm's ``pos_embed`` parameter, only with ``requires_grad=False``: the optimizer never sees it
(no gradient, no weight decay, no moments), and the exported encoder holds it, so timm loads the encoder as it
is. Its rows for the class and register tokens (where the model embeds them) are zero, as MAE's class row.
At another image size (``dynamic_img_size``) timm resamples the table as it resamples a trained one, as the
official fine-tuning code interpolates the pre-training table.
"""

from __future__ import annotations

import torch
from torch import nn

from clrun import UserError, sincos_position_embeddings


def use_sincos_positions(model: nn.Module, model_name: str) -> None:
    """Set ``model.pos_embed`` to the fixed table of its patch grid (call before any checkpoint is loaded: a
    checkpoint's table then wins, as the table of a released MAE or I-JEPA encoder is this one)."""
    table = getattr(model, "pos_embed", None)
    if not isinstance(table, nn.Parameter) or not hasattr(model, "patch_embed"):
        raise UserError(f"timm/{model_name}: sincos_pos_embed needs a vision transformer with absolute position "
                        f"embeddings (pos_embed); remove backbone.sincos_pos_embed or pick e.g. "
                        f"timm/vit_base_patch16_224")
    width = table.shape[-1]
    if width % 4:
        raise UserError(f"timm/{model_name}: sincos_pos_embed needs an embedding width divisible by 4, this model's "
                        f"is {width}")
    patches = sincos_position_embeddings(tuple(model.patch_embed.grid_size), width)
    prefix = table.shape[1] - patches.shape[0]  # the class and register tokens' rows, where the model has them
    with torch.no_grad():
        table.copy_(torch.cat([patches.new_zeros(prefix, width), patches]).unsqueeze(0))
    table.requires_grad_(False)
