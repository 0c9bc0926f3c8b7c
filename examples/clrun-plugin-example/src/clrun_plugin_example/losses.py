"""``example/align_uniform``: the alignment and uniformity loss of Wang & Isola (2020)."""

from __future__ import annotations

import contextlib
import math

import clrun
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type without autocast
        return contextlib.nullcontext()


def align_loss(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """``E ||x_i - y_i||_2^alpha`` over the positive pairs (rows of x and y, already l2-normalized)."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniform_loss(x: Tensor, t: float = 2.0) -> Tensor:
    """``log E_{i<j} exp(-t ||x_i - x_j||_2^2)`` over the distinct pairs of rows of x (l2-normalized).

    Computed as a logsumexp, so it stays finite in float32 for any ``t``.
    """
    sq_dists = torch.pdist(x, p=2).pow(2)
    return torch.logsumexp(-t * sq_dists, dim=0) - math.log(sq_dists.numel())


def _positive(name: str, value: object, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"example/align_uniform: {name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"example/align_uniform: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


class AlignUniformLoss(nn.Module):
    r"""Alignment plus uniformity on the unit hypersphere.

    Wang and Isola (2020), "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere", ICML 2020 (arXiv:2005.10242), eqs. (4) and (5) and their
    reference implementation. With ``x_i`` and ``y_i`` the l2-normalized projections of the two
    global views of image ``i`` (``N`` images):

        align   = (1/N) sum_i ||x_i - y_i||^alpha
        unif(x) = log( (2 / (N (N-1))) sum_{i<j} exp(-t ||x_i - x_j||^2) )
        uniform = (unif(x) + unif(y)) / 2
        loss    = align + uniformity_weight * uniform

    Needs exactly two global views (local views are ignored) and at least 2 images per batch.
    Computed in at least float32, also under autocast.

    Args:
        alpha: exponent of the alignment term (> 0; the paper uses 2).
        t: temperature of the Gaussian potential of the uniformity term (> 0; the paper uses 2).
        uniformity_weight: weight of the uniformity term (>= 0; the paper's ``lambda``, 1 by default).

    ``forward`` returns ``{"loss": scalar, "align": detached scalar, "uniform": detached scalar}``.
    """

    def __init__(self, alpha: float = 2.0, t: float = 2.0, uniformity_weight: float = 1.0):
        super().__init__()
        self.alpha = _positive("alpha", alpha)
        self.t = _positive("t", t)
        self.uniformity_weight = _positive("uniformity_weight", uniformity_weight, allow_zero=True)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, t={self.t}, uniformity_weight={self.uniformity_weight}"

    def forward(self, out: clrun.StepOutputs) -> dict[str, Tensor]:
        views = out.global_projections
        if len(views) != 2:
            raise clrun.UserError(
                f"example/align_uniform compares exactly 2 global views; the recipe makes {len(views)}. "
                "Use one global view with count: 2."
            )
        z1, z2 = views
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise clrun.UserError(
                "example/align_uniform needs the two global views' projections as (batch, dim) tensors of "
                f"the same shape; got {tuple(z1.shape)} and {tuple(z2.shape)}"
            )
        if z1.shape[0] < 2:
            raise clrun.UserError(
                f"example/align_uniform needs at least 2 images per batch for the uniformity term; got {z1.shape[0]}"
            )
        dtype = torch.promote_types(z1.dtype, torch.float32)
        with _autocast_off(z1.device.type):
            x = F.normalize(z1.to(dtype), dim=1)
            y = F.normalize(z2.to(dtype), dim=1)
            align = align_loss(x, y, self.alpha)
            uniform = (uniform_loss(x, self.t) + uniform_loss(y, self.t)) / 2
            loss = align + self.uniformity_weight * uniform
        return {"loss": loss, "align": align.detach(), "uniform": uniform.detach()}
