"""Barlow Twins' loss: the cross-correlation matrix of two views' projections, pushed to the identity."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Sequence

import torch
from torch import Tensor, nn

from clrun import Range, checked, distributed, loss_kit


def barlow_twins(views: Sequence[Tensor], lambd: float, scale_loss: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Barlow Twins of two or more views' projections ``(N, D)`` (the global batch: gather them first):
    the scalar loss and the detached metrics ``on_diagonal`` and ``off_diagonal``, averaged over the pairs
    of views (see :class:`BarlowTwinsLoss`). Runs in at least float32, also under autocast."""
    n, d = views[0].shape
    dtype = loss_kit.compute_dtype(views)
    with loss_kit.autocast_off(views[0]):
        standardized = []
        for z in views:
            z = z.to(dtype)
            mean = z.mean(dim=0)
            var = z.var(dim=0, unbiased=False)
            standardized.append((z - mean) / torch.sqrt(var + 1e-5))
        eye = torch.eye(d, dtype=torch.bool, device=views[0].device)
        losses, on_terms, off_terms = [], [], []
        for a, b in itertools.combinations(standardized, 2):
            c = a.T @ b / n  # (D, D) cross-correlation
            on = (1.0 - torch.diagonal(c)).pow(2).sum()
            off = c.masked_fill(eye, 0.0).pow(2).sum()
            losses.append(on + lambd * off)
            on_terms.append(on.detach())
            off_terms.append(off.detach())
        loss = scale_loss * torch.stack(losses).mean()
    return loss, {"on_diagonal": torch.stack(on_terms).mean(), "off_diagonal": torch.stack(off_terms).mean()}


@checked
class BarlowTwinsLoss(nn.Module):
    r"""The redundancy-reduction loss of Barlow Twins.

    Zbontar, Jing, Misra, LeCun and Deny (2021), "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", ICML 2021 (arXiv:2103.03230), eqs. (1) and (2); the constants follow the
    official code (facebookresearch/barlowtwins).

    Input: the projector outputs ``z^A, z^B`` of two global views of the same ``N`` images, each of
    shape ``(N, D)``; row ``n`` of both comes from image ``n``. Local views (multi-crop) are ignored.
    Each view is standardized per dimension over the batch, like ``BatchNorm1d(D, affine=False)`` in
    training mode (biased variance, ``eps = 1e-5``):

        zn_{n,i} = (z_{n,i} - mean_n z_{n,i}) / sqrt(var_n z_{n,i} + 1e-5)

    and with the ``(D, D)`` cross-correlation matrix ``C = zn^A^T zn^B / N``,

        on_diagonal  = sum_i (1 - C_ii)^2                 (invariance)
        off_diagonal = sum_i sum_{j != i} C_ij^2          (redundancy reduction)
        loss         = scale_loss * (on_diagonal + lambd * off_diagonal)

    With more than two global views, the loss and the metrics are averaged over all unordered pairs
    of global views. The standardization and the matmul run in at least float32, also under autocast
    (float64 inputs stay float64). A batch needs at least 2 images.

    Across ranks (torchrun): the views are gathered from every rank with gradients first, so
    the standardization and the cross-correlation use the global batch (``N`` is the global batch size) and every rank computes the
    same loss; DDP's mean of the ranks' gradients is then the single-process gradient (the official
    code sums the cross-correlation over ranks instead, which gives the same value).

    Args:
        lambd: ``lambda >= 0``, the weight of the off-diagonal (redundancy) term; 0.0051 in the
            official code (the paper's 5e-3 for D = 8192).
        scale_loss: ``> 0``, a factor on the whole loss; 1 in the paper (solo-learn uses 0.1 on
            CIFAR). With plain SGD it acts like a learning-rate factor; with LARS or Adam it mostly
            does not matter.

    Returns (from ``forward``): a dict with the scalar ``"loss"`` and detached 0-dim metrics:

        on_diagonal:  ``sum_i (1 - C_ii)^2``, unweighted (0 when the views agree perfectly);
        off_diagonal: ``sum_{i != j} C_ij^2``, unweighted (0 for decorrelated dimensions).
    """

    main_metric = "on_diagonal"  # shown on the console each epoch
    reads = frozenset({"online.projections"})

    def __init__(self, lambd: Annotated[float, Range(min=0, hint="the official code uses 0.0051")] = 0.0051,
                 scale_loss: Annotated[float, Range(min=0, exclusive_min=True,
                                                    hint="1.0 in the paper; solo-learn uses 0.1 on CIFAR")] = 1.0):
        super().__init__()
        self.lambd = float(lambd)
        self.scale_loss = float(scale_loss)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, scale_loss={self.scale_loss}"

    def forward(self, out: Any) -> dict[str, Tensor]:
        views = loss_kit.global_projections(self, out, "standardize each dimension over the batch")
        views = [distributed.gather(z) for z in views]  # the global batch, with gradients
        loss, metrics = barlow_twins(views, self.lambd, self.scale_loss)
        return {"loss": loss, **metrics}
