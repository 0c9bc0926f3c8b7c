"""DCL and DCLW: decoupled contrastive learning, NT-Xent without the positive in the denominator."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import checked, distributed, loss_kit
from clrun.plugins.losses.ntxent import anchor_rows


def dcl(z1: Tensor, z2: Tensor, temperature: float, weight_sigma: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """DCL (DCLW with ``weight_sigma``) of two views' projections ``(N, D)``: the scalar loss and the detached
    metrics ``contrastive_acc``, ``pos_cosine``, ``neg_cosine`` (see :class:`DCLLoss`). Across ranks both
    views are gathered with gradients and this rank's anchors' rows are computed; at least float32."""
    n = z1.shape[0]
    dtype = loss_kit.compute_dtype(z1, z2)
    with loss_kit.autocast_off(z1):
        # The global batch's 2N unit vectors, view 1 then view 2, with gradients from every rank.
        z = F.normalize(torch.cat([distributed.gather(z1), distributed.gather(z2)], dim=0).to(dtype), dim=1)
        total = z.shape[0]
        mine = anchor_rows(n, total // 2, z.device)
        positives = (mine + total // 2) % total
        rows = torch.arange(len(mine), device=z.device)
        cos = z[mine] @ z.T  # (2n, 2N)
        pos = cos[rows, positives]
        negatives = (cos / temperature).index_put((rows, mine), torch.tensor(float("-inf"), dtype=dtype))
        negatives = negatives.index_put((rows, positives), torch.tensor(float("-inf"), dtype=dtype))
        weight = positive_weights(z, total // 2, weight_sigma)[mine % (total // 2)] if weight_sigma else 1.0
        loss = (-weight * pos / temperature + torch.logsumexp(negatives, dim=1)).mean()

        with torch.no_grad():
            cos_d, pos_d = cos.detach(), pos.detach()
            acc = (pos_d > negatives.detach().max(dim=1).values * temperature).to(dtype).mean()
            neg_cos = ((cos_d.sum(dim=1) - cos_d[rows, mine] - pos_d) / (total - 2)).mean()
    return loss, {"contrastive_acc": acc, "pos_cosine": pos_d.mean(), "neg_cosine": neg_cos}


def positive_weights(z: Tensor, images: int, sigma: float) -> Tensor:
    """DCLW's weight of every image's positive pair, ``(images,)``, from the whole batch's unit vectors ``z``
    (``(2 images, D)``, view 1 then view 2)."""
    agreement = (z[:images] * z[images:]).sum(dim=1) / sigma
    return 2 - images * F.softmax(agreement, dim=0)


@checked
class DCLLoss(nn.Module):
    r"""Decoupled contrastive loss (DCL), and its weighted variant DCLW when ``weight_sigma`` is set.

    Yeh, Hong, Hsu, Liu, Chen and LeCun (2022), "Decoupled Contrastive Learning", ECCV 2022
    (arXiv:2110.06848), eq. (6) and (8). NT-Xent's denominator holds the positive pair, which couples
    the positive's and the negatives' gradients (the "negative-positive coupling" that makes SimCLR need
    large batches); DCL removes it.

    Input: the projections of exactly two global views, ``(N, D)`` each, row ``n`` from image ``n``;
    local views are ignored. With ``u = z / ||z||``, the ``2N`` vectors of both views and, for an anchor
    ``u_i`` of one view, its positive ``u_i'`` (the other view of image ``i``):

        l_i  = -w_i (u_i . u_i') / tau + log sum_{k not in {i, i'}} exp(u_i . u_k / tau)
        loss = (1 / 2N) sum over the 2N anchors of l_i

    the negatives being both views of every other image (``2N - 2`` of them). DCL has ``w_i = 1``;
    DCLW weights the positive by the von Mises-Fisher weighting of the paper,

        w_i = 2 - N exp(u_i^1 . u_i^2 / sigma) / sum_m exp(u_m^1 . u_m^2 / sigma)

    (mean 1 over the batch; pairs that already agree get less weight), with the gradient flowing through
    ``w`` as in the authors' code. The math runs in at least float32, also under autocast.

    Across ranks (torchrun): both views are gathered from every rank with gradients, so ``N`` is the
    global batch (the negatives and DCLW's weights are the whole batch's) and each rank computes its own
    anchors' rows; the mean of the ranks' losses and gradients is the single-process loss and gradient.

    Args:
        temperature:  ``tau > 0`` (the paper and LightlySSL: 0.1).
        weight_sigma: DCLW's ``sigma > 0`` (the paper: 0.5); ``None`` for DCL.

    Returns (from ``forward``): the scalar ``"loss"`` and detached 0-dim metrics: ``contrastive_acc``
    (fraction of anchors whose positive is closer than all their negatives), ``pos_cosine`` and
    ``neg_cosine`` (mean cosine of the positive and the negative pairs).
    """

    main_metric = "contrastive_acc"  # shown on the console each epoch
    reads = frozenset({"online.projections"})

    def __init__(self, temperature: Annotated[float, loss_kit.temperature_range("the DCL paper uses 0.1")] = 0.1,
                 weight_sigma: Optional[Annotated[float, loss_kit.temperature_range("DCLW's paper uses 0.5; null for DCL")]] = None):
        super().__init__()
        self.temperature = float(temperature)
        self.weight_sigma = None if weight_sigma is None else float(weight_sigma)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, weight_sigma={self.weight_sigma}"

    def forward(self, out: Any) -> dict[str, Tensor]:
        z1, z2 = loss_kit.global_projections(self, out, "have negatives", exactly=2)
        loss, metrics = dcl(z1, z2, self.temperature, self.weight_sigma)
        return {"loss": loss, **metrics}


@checked
class DCLWLoss(DCLLoss):
    """DCLW: :class:`DCLLoss` with the positive weighted by the von Mises-Fisher weighting (sigma 0.5)."""

    def __init__(self, temperature: Annotated[float, loss_kit.temperature_range("the DCL paper uses 0.1")] = 0.1,
                 weight_sigma: Annotated[float, loss_kit.temperature_range("DCLW's paper uses 0.5")] = 0.5):
        super().__init__(temperature, weight_sigma)  # the annotation makes the factory refuse null
