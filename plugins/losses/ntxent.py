"""NT-Xent, the normalized temperature-scaled cross-entropy loss of SimCLR."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import checked, distributed, loss_kit


def ntxent(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, dict[str, Tensor]]:
    """NT-Xent of two views' projections ``(N, D)`` (row ``n`` of both from image ``n``): the scalar loss
    and the detached metrics ``contrastive_acc``, ``logit_entropy``, ``pos_cosine``, ``neg_cosine``
    (see :class:`NTXentLoss`). Across ranks both views are gathered with gradients and this rank's
    anchors' rows are computed. Runs in at least float32, also under autocast."""
    n = z1.shape[0]
    dtype = loss_kit.compute_dtype(z1, z2)  # fp16/bf16 -> fp32, fp64 stays
    with loss_kit.autocast_off(z1):
        # Every rank's rows (with gradients): z holds the global batch's 2N vectors, view 1 then view 2.
        z = F.normalize(torch.cat([distributed.gather(z1), distributed.gather(z2)], dim=0).to(dtype), dim=1)
        total = z.shape[0]  # 2N
        mine = anchor_rows(n, total // 2, z.device)  # this rank's anchors: its images in both views
        cos = z[mine] @ z.T  # (2n, 2N) cosine similarities: the one matmul
        rows = torch.arange(len(mine), device=z.device)
        logits = cos / temperature
        logits[rows, mine] = float("-inf")  # an anchor is not its own candidate
        targets = (mine + total // 2) % total  # j(i): the other view of the same image
        loss = F.cross_entropy(logits, targets)

        # The metrics make no (2n, 2N) mask and at most two more matrices: at N = 4096 each is 268 MB.
        with torch.no_grad():
            logits_d, cos_d = logits.detach(), cos.detach()
            acc = (logits_d.argmax(dim=1) == targets).to(dtype).mean()
            # entr(p) = -p log p, and 0 where p = 0 (the anchor itself)
            entropy = torch.special.entr(F.softmax(logits_d, dim=1)).sum(dim=1).mean()
            pos = cos_d[rows, targets]
            pos_cos = pos.mean()
            # every anchor has the same 2N - 2 negatives count: the mean of the row means is the mean
            neg_cos = ((cos_d.sum(dim=1) - cos_d[rows, mine] - pos) / (total - 2)).mean()
    return loss, {"contrastive_acc": acc, "logit_entropy": entropy, "pos_cosine": pos_cos, "neg_cosine": neg_cos}


@checked
class NTXentLoss(nn.Module):
    r"""NT-Xent (normalized temperature-scaled cross entropy), the loss of SimCLR.

    Chen, Kornblith, Norouzi and Hinton (2020), "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020 (arXiv:2002.05709), eq. (1). Also known as InfoNCE with
    in-batch negatives.

    Input: the projector outputs of exactly two global views of the same ``N`` images, each a
    tensor of shape ``(N, D)``; row ``n`` of both views comes from image ``n``. Local views (multi-crop)
    are ignored. Stacking the views gives ``2N`` vectors ``z_1 .. z_2N`` where ``j(i)`` is the
    other view of the same image (``i + N`` or ``i - N``). With ``u_i = z_i / ||z_i||`` and
    ``s_ik = u_i . u_k / tau``:

        l_i  = -log( exp(s_{i j(i)}) / sum_{k != i} exp(s_ik) )
        loss = (1 / 2N) * sum_{i=1}^{2N} l_i

    so every image is the anchor once per view, its other view is the positive and the remaining
    ``2N - 2`` vectors are the negatives. It is computed as a cross entropy over the ``(2N, 2N)``
    logit matrix with the diagonal masked to ``-inf`` (one matmul). Normalization, the matmul and
    the softmax run in at least float32, also under autocast (float64 inputs stay float64).

    Across ranks (torchrun): both views are gathered from every rank with gradients, so ``N`` is the
    global batch and every anchor has the ``2N - 2`` negatives of the whole batch, as in SimCLR's
    cross-replica setup. Each rank computes the rows of its own ``2N / world`` anchors (a
    ``(2N / world, 2N)`` logit block, not the whole matrix); the mean of the ranks' losses, and DDP's
    mean of their gradients, are exactly the single-process loss and gradient of the global batch.

    Args:
        temperature: ``tau > 0``. SimCLR uses 0.5 by default (0.1 to 0.2 with large batches and
            LARS); MoCo v2 and many follow-ups use 0.07 to 0.2. Lower values weight hard negatives
            more.

    Returns (from ``forward``): a dict with the scalar ``"loss"`` and detached 0-dim metrics:

        contrastive_acc: fraction of the 2N anchors whose positive has the highest logit among
                         all ``k != i`` (top-1 accuracy of the instance-discrimination task);
        logit_entropy:   mean entropy (nats) of the softmax over ``k != i``; ``log(2N - 1)`` for
                         uniform similarities, near 0 when the task is easy (a hardness signal);
        pos_cosine:      mean cosine similarity of the positive pairs;
        neg_cosine:      mean cosine similarity of the negative pairs.
    """

    main_metric = "contrastive_acc"  # shown on the console each epoch
    reads = frozenset({"online.projections"})

    def __init__(self, temperature: Annotated[float, loss_kit.temperature_range("SimCLR uses 0.5; 0.07 to 0.2 is common")] = 0.5):
        super().__init__()
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, out: Any) -> dict[str, Tensor]:
        z1, z2 = loss_kit.global_projections(self, out, "have negatives", exactly=2)
        loss, metrics = ntxent(z1, z2, self.temperature)
        return {"loss": loss, **metrics}


def anchor_rows(n: int, global_n: int, device: torch.device) -> Tensor:
    """The rows of this rank's ``n`` images among the ``2 * global_n`` gathered vectors (view 1's block,
    then view 2's; ranks in order within each): all of them in a single process."""
    start = distributed.rank() * n
    own = torch.arange(start, start + n, device=device)
    return torch.cat([own, own + global_n])
