"""What a backbone that works on tokens (a vision transformer) offers besides its pooled features.

A backbone offers tokens by having two methods,

    backbone.forward_tokens(images, visible=None, drop=False) -> clrun.Tokens
    backbone.token_grid(height, width) -> (rows, columns)     # the patch grid of an image of that size

``visible`` is a ``(B, L)`` bool mask over the patch grid (``clrun.Masks.visible``): the hidden patches
are replaced by a learned mask token (iBOT) or, with ``drop=True``, left out of the sequence with the
position embeddings of the kept ones (MAE's encoder, I-JEPA's context encoder; every image must keep the
same number). When dropping, the training step also passes ``visible_index=`` (``clrun.Masks.visible_index``,
``(B, K)`` long, the kept patches in raster order): gathering them needs no read of the mask, which on a GPU
would make the host wait for the device. A backbone without these methods (a CNN) has no tokens:
``offers_tokens`` says so.

Sharded training (``train.strategy: fsdp``) gathers a backbone's weights for ``forward_tokens`` as it does
for ``forward`` (``clrun.training.parallel.sharding``), so it must reach its blocks through their ``forward``.

A backbone's tensors that only pre-training uses, such as that mask token, are named ``pretext_*``
(``clrun.encoder_file.PRETEXT``): the exported encoder leaves them out, so it loads into the plain model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `import clrun` stays free of torch
    from torch import Tensor


@dataclass(frozen=True, eq=False)  # tensors: compared by identity, not element-wise
class Tokens:
    """A batch's tokens after the backbone's last block and final norm.

    prefix:  ``(B, P, D)`` class and register tokens (``P`` may be 0).
    patches: ``(B, N, D)`` patch tokens in raster order: every patch of the ``grid``, or with tokens
             dropped the visible ones only (in raster order).
    grid:    ``(rows, columns)`` of the image's patch grid.
    pooled:  ``(B, F)`` the pooled features, what ``backbone(images)`` returns.
    """

    prefix: Tensor
    patches: Tensor
    grid: tuple[int, int]
    pooled: Tensor


def offers_tokens(backbone: Any) -> bool:
    """Whether ``backbone`` has the ``forward_tokens`` and ``token_grid`` methods (see this module)."""
    return all(callable(getattr(backbone, name, None)) for name in ("forward_tokens", "token_grid"))


def patchify(images: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B, C, H, W)`` images as ``(B, rows * columns, ph * pw * C)`` patches of a ``grid`` (rows, columns)
    in raster order, each patch's pixels row by row with the channels last (MAE's layout): the pixels
    a masked-image-modelling head predicts per patch token."""
    batch, channels, height, width = images.shape
    rows, columns = grid
    if height % rows or width % columns:
        raise ValueError(f"patchify: a {height} x {width} image does not split into a {rows} x {columns} grid of "
                         f"equal patches")
    ph, pw = height // rows, width // columns
    patches = images.reshape(batch, channels, rows, ph, columns, pw).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, rows * columns, ph * pw * channels)


def sincos_position_embeddings(grid: tuple[int, int], dim: int) -> Tensor:
    """``(rows * columns, dim)`` float32 fixed 2-D sine-cosine position embeddings in raster order, the layout
    of the published masked-modelling code (its ``get_2d_sincos_pos_embed``): the first half encodes the patch's
    column, the second its row, each half as ``[sin(p w_i), cos(p w_i)]`` with ``w_i = 10000^(-i / (dim / 4))``,
    computed in float64 and rounded once, as there. Any grid, so a table follows a dynamic image size."""
    import torch

    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    rows, columns = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    row, column = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(columns, dtype=torch.float64),
                                 indexing="ij")

    def one_axis(position: Tensor) -> Tensor:
        angles = position.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([one_axis(column), one_axis(row)], dim=1).float()
