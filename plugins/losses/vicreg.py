"""VICReg's loss: variance, invariance and covariance regularization of two views' projections."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import ComponentError, Range, checked, distributed, loss_kit

STD_EPS = 1e-4  # inside the square root of the variance term, as in the paper and the official code


def vicreg(views: Sequence[Tensor], sim_coeff: float, std_coeff: float, cov_coeff: float) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg of two or more views' projections ``(N, D)`` (the global batch: gather them first): the scalar
    loss and the detached unweighted terms ``invariance``, ``variance``, ``covariance``, averaged over the
    pairs of views (see :class:`VICRegLoss`). Runs in at least float32, also under autocast."""
    n, d = views[0].shape
    dtype = loss_kit.compute_dtype(views)
    with loss_kit.autocast_off(views[0]):
        views = [z.to(dtype) for z in views]
        eye = torch.eye(d, dtype=torch.bool, device=views[0].device)
        var_terms, cov_terms = [], []  # per view: each pair reuses its views' terms
        for z in views:
            zc = z - z.mean(dim=0)
            std = torch.sqrt(zc.pow(2).sum(dim=0) / (n - 1) + STD_EPS)
            var_terms.append(F.relu(1.0 - std).mean())
            cov = zc.T @ zc / (n - 1)
            cov_terms.append(cov.masked_fill(eye, 0.0).pow(2).sum() / d)
        losses, inv_parts, var_parts, cov_parts = [], [], [], []
        for a, b in itertools.combinations(range(len(views)), 2):
            inv = F.mse_loss(views[a], views[b])
            var = var_terms[a] / 2 + var_terms[b] / 2
            cov = cov_terms[a] + cov_terms[b]
            losses.append(sim_coeff * inv + std_coeff * var + cov_coeff * cov)
            inv_parts.append(inv.detach())
            var_parts.append(var.detach())
            cov_parts.append(cov.detach())
        loss = torch.stack(losses).mean()
    return loss, {
        "invariance": torch.stack(inv_parts).mean(),
        "variance": torch.stack(var_parts).mean(),
        "covariance": torch.stack(cov_parts).mean(),
    }


@checked
class VICRegLoss(nn.Module):
    r"""Variance-Invariance-Covariance Regularization.

    Bardes, Ponce and LeCun (2022), "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022 (arXiv:2105.04906), eqs. (1) to (6); the reductions follow
    the official code (facebookresearch/vicreg).

    Input: the projector outputs ``z^A, z^B`` of two global views of the same ``N`` images, each of
    shape ``(N, D)``; row ``n`` of both comes from image ``n``. Local views (multi-crop) are ignored.
    With ``zc = z - mean_n z`` (per dimension),

        invariance = (1 / (N D)) sum_{n,i} (z^A_{n,i} - z^B_{n,i})^2             (F.mse_loss)
        variance   = v(z^A) / 2 + v(z^B) / 2,
                     v(z) = (1/D) sum_i relu(1 - sqrt(Var_n(z_i) + 1e-4))        (unbiased Var)
        covariance = c(z^A) + c(z^B),
                     c(z) = (1/D) sum_{i != j} Cov(z)_ij^2,  Cov(z) = zc^T zc / (N - 1)
        loss       = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance

    With more than two global views, the loss and the metrics are averaged over all unordered pairs
    of global views. The statistics run in at least float32, also under autocast (float64 inputs
    stay float64). A batch needs at least 2 images.

    Across ranks (torchrun): the views are gathered from every rank with gradients first, so
    the variances, covariances and the invariance term use the global batch (``N`` is the global batch size) and every rank computes the
    same loss; DDP's mean of the ranks' gradients is then the single-process gradient, as with the
    official code's ``FullGatherLayer``.

    Args:
        sim_coeff: ``lambda >= 0``, the weight of the invariance term; 25 in the paper.
        std_coeff: ``mu >= 0``, the weight of the variance term; 25 in the paper.
        cov_coeff: ``nu >= 0``, the weight of the covariance term; 1 in the paper.
        (At least one must be > 0.)

    Returns (from ``forward``): a dict with the scalar ``"loss"`` and detached 0-dim metrics, the
    unweighted terms:

        invariance: the mean squared distance between the views (0 when they agree);
        variance:   the hinge on the per-dimension std (0 when every std is >= 1; 1 when collapsed);
        covariance: the scaled sum of squared off-diagonal covariances (0 for decorrelated dimensions).
    """

    main_metric = "variance"  # shown on the console each epoch
    reads = frozenset({"online.projections"})

    def __init__(self, sim_coeff: Annotated[float, Range(min=0, hint="the paper uses 25")] = 25.0,
                 std_coeff: Annotated[float, Range(min=0, hint="the paper uses 25")] = 25.0,
                 cov_coeff: Annotated[float, Range(min=0, hint="the paper uses 1")] = 1.0):
        super().__init__()
        self.sim_coeff, self.std_coeff, self.cov_coeff = float(sim_coeff), float(std_coeff), float(cov_coeff)
        if self.sim_coeff == self.std_coeff == self.cov_coeff == 0:
            raise ComponentError(
                f"{self.component_name}: sim_coeff, std_coeff and cov_coeff are all 0, so the loss is constant; "
                "set at least one > 0 (the paper uses 25, 25 and 1)"
            )

    def extra_repr(self) -> str:
        return f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, cov_coeff={self.cov_coeff}"

    def forward(self, out: Any) -> dict[str, Tensor]:
        views = loss_kit.global_projections(self, out, "estimate variances and covariances")
        views = [distributed.gather(z) for z in views]  # the global batch, with gradients
        loss, metrics = vicreg(views, self.sim_coeff, self.std_coeff, self.cov_coeff)
        return {"loss": loss, **metrics}
