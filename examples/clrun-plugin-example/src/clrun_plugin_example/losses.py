"""``example/align_uniform``: the alignment and uniformity loss of Wang & Isola (2020).

It is written like the built-in losses: its arguments' limits are ``clrun.Range`` annotations in the
signature (the recipe validator and ``clrun.checked`` enforce them, ``cl-run components loss
example/align_uniform`` shows them), it declares what it ``reads`` of a step, and ``clrun.loss_kit``
does the view and batch checks (with errors that name the loss and the fix) and float32 math with
autocast off.
"""

from __future__ import annotations

import math
from typing import Annotated

import clrun
import torch
import torch.nn.functional as F
from clrun import Range, checked, loss_kit
from torch import Tensor, nn

Positive = Annotated[float, Range(min=0, exclusive_min=True, hint="the paper uses 2")]


def align_loss(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """``E ||x_i - y_i||_2^alpha`` over the positive pairs (rows of x and y, already l2-normalized)."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniform_loss(x: Tensor, t: float = 2.0) -> Tensor:
    """``log E_{i<j} exp(-t ||x_i - x_j||_2^2)`` over the distinct pairs of rows of x (l2-normalized).

    Computed as a logsumexp, so it stays finite in float32 for any ``t``.
    """
    sq_dists = torch.pdist(x, p=2).pow(2)
    return torch.logsumexp(-t * sq_dists, dim=0) - math.log(sq_dists.numel())


@checked  # the Ranges below are enforced on direct construction too: AlignUniformLoss(alpha=0) raises
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

    reads = frozenset({"online.projections"})  # what forward takes from the step: the projections, nothing else

    def __init__(self, alpha: Positive = 2.0, t: Positive = 2.0,
                 uniformity_weight: Annotated[float, Range(min=0, hint="the paper's lambda is 1")] = 1.0):
        super().__init__()
        # Already checked (a finite number in range); kept as attributes, so a recipe can schedule them.
        self.alpha, self.t, self.uniformity_weight = float(alpha), float(t), float(uniformity_weight)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, t={self.t}, uniformity_weight={self.uniformity_weight}"

    def forward(self, out: clrun.StepOutputs) -> dict[str, Tensor]:
        # exactly 2 global views of one (batch, dim) shape, batch >= 2; else a clrun.UserError for the recipe
        z1, z2 = loss_kit.global_projections(self, out, "compute the uniformity term", exactly=2)
        dtype = loss_kit.compute_dtype(z1, z2)  # float32 (float64 stays float64), also for bf16 inputs
        with loss_kit.autocast_off(z1):
            x = F.normalize(z1.to(dtype), dim=1)
            y = F.normalize(z2.to(dtype), dim=1)
            align = align_loss(x, y, self.alpha)
            uniform = (uniform_loss(x, self.t) + uniform_loss(y, self.t)) / 2
            loss = align + self.uniformity_weight * uniform
        return {"loss": loss, "align": align.detach(), "uniform": uniform.detach()}
