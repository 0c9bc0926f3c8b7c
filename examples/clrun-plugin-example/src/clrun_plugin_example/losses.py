"""``example/align_uniform``: the alignment and uniformity loss of Wang & Isola (2020).

It uses ``clrun.loss_kit`` like the built-in losses: the view and batch checks (with errors that name
the loss and the fix), the argument checks, and float32 math with autocast off.
"""

from __future__ import annotations

import math

import clrun
import torch
import torch.nn.functional as F
from clrun import loss_kit
from torch import Tensor, nn

OWNER = "example/align_uniform"


def align_loss(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """``E ||x_i - y_i||_2^alpha`` over the positive pairs (rows of x and y, already l2-normalized)."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniform_loss(x: Tensor, t: float = 2.0) -> Tensor:
    """``log E_{i<j} exp(-t ||x_i - x_j||_2^2)`` over the distinct pairs of rows of x (l2-normalized).

    Computed as a logsumexp, so it stays finite in float32 for any ``t``.
    """
    sq_dists = torch.pdist(x, p=2).pow(2)
    return torch.logsumexp(-t * sq_dists, dim=0) - math.log(sq_dists.numel())


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
        self.alpha = loss_kit.float_arg(OWNER, "alpha", alpha, hint=" (the paper uses 2)")
        self.t = loss_kit.float_arg(OWNER, "t", t, hint=" (the paper uses 2)")
        self.uniformity_weight = loss_kit.float_arg(OWNER, "uniformity_weight", uniformity_weight, inclusive=True)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, t={self.t}, uniformity_weight={self.uniformity_weight}"

    def forward(self, out: clrun.StepOutputs) -> dict[str, Tensor]:
        # exactly 2 global views of one (batch, dim) shape, batch >= 2; else a clrun.UserError for the recipe
        z1, z2 = loss_kit.global_projections(OWNER, out, "compute the uniformity term", exactly=2)
        dtype = loss_kit.compute_dtype(z1, z2)  # float32 (float64 stays float64), also for bf16 inputs
        with loss_kit.autocast_off(z1):
            x = F.normalize(z1.to(dtype), dim=1)
            y = F.normalize(z2.to(dtype), dim=1)
            align = align_loss(x, y, self.alpha)
            uniform = (uniform_loss(x, self.t) + uniform_loss(y, self.t)) / 2
            loss = align + self.uniformity_weight * uniform
        return {"loss": loss, "align": align.detach(), "uniform": uniform.detach()}
