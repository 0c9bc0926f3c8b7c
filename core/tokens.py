"""What a backbone that works on tokens (a vision transformer) offers besides its pooled features.

A backbone offers tokens by having two methods,

    backbone.forward_tokens(images, visible=None, drop=False) -> clrun.Tokens
    backbone.token_grid(height, width) -> (rows, columns)     # the patch grid of an image of that size

``visible`` is a ``(B, L)`` bool mask over the patch grid (``clrun.Masks.visible``): the hidden patches
are replaced by a learned mask token (iBOT) or, with ``drop=True``, left out of the sequence with the
position embeddings of the kept ones (MAE's encoder, I-JEPA's context encoder; every image must keep the
same number). A backbone without these methods (a CNN) has no tokens: ``offers_tokens`` says so.

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
