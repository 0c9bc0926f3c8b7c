"""Gradient clipping, as ``train.grad_clip`` and ``train.grad_clip_mode`` ask.

``global_norm``: torch's ``clip_grad_norm_``, every gradient scaled by one factor so that their joint L2 norm
is at most ``max_norm`` (most methods' clipping).

``per_parameter``: each parameter's gradient scaled on its own so that its L2 norm is at most ``max_norm``,
by ``max_norm / (norm + 1e-6)`` where that is below 1: the ``clip_gradients`` of the self-distillation
methods' reference ``utils.py`` (their ``--clip_grad 3.0``), computed on the device without reading the norms
back (theirs calls ``.item()`` per parameter). A gradient at most ``max_norm`` long is multiplied by exactly
1, so it is left bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

ClipMode = Literal["global_norm", "per_parameter"]

# The reference clip_gradients divides by norm + 1e-6 (a zero gradient stays zero either way).
EPSILON = 1e-6


@torch.no_grad()
def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float, mode: ClipMode) -> None:
    """Clip the gradients of ``parameters`` (those without one are skipped) by ``mode``."""
    if mode == "global_norm":
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    for p in parameters:
        if p.grad is not None:
            norm = torch.linalg.vector_norm(p.grad)
            p.grad.mul_(torch.clamp(max_norm / (norm + EPSILON), max=1.0))
