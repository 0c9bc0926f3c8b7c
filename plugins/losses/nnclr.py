"""NNCLR's loss: InfoNCE where each view's positive is its nearest neighbour in a support queue."""

from __future__ import annotations

from typing import Annotated, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import Range, checked, distributed, loss_kit
from clrun.plugins.losses.queue import ring_enqueue


def nnclr(projections: Sequence[Tensor], predictions: Sequence[Tensor], queue: Tensor, temperature: float
          ) -> tuple[Tensor, dict[str, Tensor], list[Tensor]]:
    """NNCLR's symmetric InfoNCE: the ``queue``'s (``(K, D)`` unit rows) nearest neighbour of each of two
    views' projections ``(n, D)`` against the other view's predictions (gathered from every rank with
    gradients). Returns the scalar loss, the detached metrics ``contrastive_acc``, ``pos_cosine``,
    ``neg_cosine``, ``nn_cosine`` (see :class:`NNCLRLoss`), and the unit projections (no gradient), which
    the caller enqueues. At least float32, also under autocast."""
    n = projections[0].shape[0]
    dtype = loss_kit.compute_dtype(projections, predictions)
    with loss_kit.autocast_off(projections[0]):
        z = [F.normalize(t.detach().to(dtype), dim=1) for t in projections]
        p = [F.normalize(distributed.gather(t).to(dtype), dim=1) for t in predictions]  # global batch
        queue = queue.detach().to(dtype=dtype, copy=True)  # written after the loss; autograd keeps operands
        nn_cos, neighbours = [], []
        for zv in z:
            best = (zv @ queue.T).max(dim=1)
            nn_cos.append(best.values)
            neighbours.append(queue[best.indices])
        own = distributed.rank() * n + torch.arange(n, device=z[0].device)
        logits = [neighbours[0] @ p[1].T, neighbours[1] @ p[0].T]  # (n, N) cosines
        loss = sum(F.cross_entropy(c / temperature, own) for c in logits) / 2

        with torch.no_grad():
            c = torch.cat([x.detach() for x in logits])
            targets = torch.cat([own, own])
            pos = c[torch.arange(len(targets), device=c.device), targets]
            acc = (c.argmax(dim=1) == targets).to(dtype).mean()
            neg_cos = ((c.sum(dim=1) - pos) / (c.shape[1] - 1)).mean()
            nn_cosine = torch.cat(nn_cos).mean()
    return loss, {"contrastive_acc": acc, "pos_cosine": pos.mean(), "neg_cosine": neg_cos, "nn_cosine": nn_cosine}, z


@checked
class NNCLRLoss(nn.Module):
    r"""Nearest-neighbour contrastive learning: the positive of a view is the support set's nearest
    neighbour of the other view's projection.

    Dwibedi, Aytar, Tompson, Sermanet and Zisserman (2021), "With a Little Help from My Friends:
    Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021 (arXiv:2104.14548),
    eq. (2), symmetrized, with the prediction head of its section 4.

    Input: the projections of exactly two global views (``(N, D)`` each, row ``n`` from image ``n``) and,
    when the recipe has a ``predictor:`` section, their predictions (else the projections stand in for
    them); local views are ignored. With ``NN(z)`` the row of the support queue ``Q`` (unit vectors)
    with the largest cosine to ``z`` (no gradient flows into the queue) and ``p`` the unit predictions,

        l(a, b)_n = -log( exp(NN(z^a_n).p^b_n / tau) / sum_m exp(NN(z^a_n).p^b_m / tau) )
        loss      = (mean_n l(1, 2)_n + mean_n l(2, 1)_n) / 2

    where ``m`` runs over the batch (the other images' predictions are the negatives). The math runs in
    at least float32, also under autocast.

    After the loss, in training mode only, the unit projections of the first global view are written
    into the queue (first in first out, the newest ``queue_size`` kept): buffers ``queue`` ``(queue_size,
    D)`` and ``queue_ptr`` hold the whole state, saved in checkpoints. The queue starts as random unit
    vectors from torch's global RNG, so the first ``queue_size / N`` steps look up some random positives.

    Across ranks (torchrun): the predictions are gathered with gradients (every rank's images are
    negatives) and the queue receives every rank's projections in rank order (gathered without
    gradients), so the queues stay identical on all ranks and equal to the queue of one process training
    on the concatenated batch: the support set is the global batch's, which LightlySSL's memory bank
    is not (its issue #1018).

    Args:
        in_dim:      the projections' width ``D`` (injected by the training loop; sizes the queue).
        queue_size:  the support set's size (the paper: 98304 for batch 4096; keep it many batches).
        temperature: ``tau > 0`` (the paper: 0.1).

    Returns (from ``forward``): the scalar ``"loss"`` and detached 0-dim metrics: ``contrastive_acc``
    (fraction of neighbours whose own image's prediction has the highest logit), ``pos_cosine``
    (neighbour vs. that prediction), ``neg_cosine`` (neighbour vs. the other predictions) and
    ``nn_cosine`` (projection vs. its neighbour: near 1 once the queue holds close neighbours).
    """

    main_metric = "contrastive_acc"  # shown on the console each epoch
    # The predictions when the recipe has a predictor (always made then), else the projections stand in for
    # them: only the projections are required.
    reads = frozenset({"online.projections"})

    def __init__(self, in_dim: Annotated[int, Range(min=1, hint="the projections' width, set by the training loop")],
                 queue_size: Annotated[int, Range(min=1, hint="NNCLR uses 98304; keep it many times the batch size")] = 98304,
                 temperature: Annotated[float, loss_kit.temperature_range("NNCLR uses 0.1")] = 0.1):
        super().__init__()
        self.in_dim, self.queue_size, self.temperature = in_dim, queue_size, float(temperature)
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, self.in_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, queue_size={self.queue_size}, temperature={self.temperature}"

    def forward(self, out: Any) -> dict[str, Tensor]:
        global_idx = loss_kit.global_view_indices(self, out, exactly=2)
        projections = [out.projections[i] for i in global_idx]
        predictions = projections if getattr(out, "predictions", None) is None else \
            [loss_kit.required_predictions(self, out)[i] for i in global_idx]
        n = loss_kit.batch_of_width(self, "the global views' projections and predictions", projections + predictions, self.in_dim)
        loss_kit.at_least_two_images(self, n, "have negatives")
        loss, metrics, z = nnclr(projections, predictions, self.queue, self.temperature)
        if self.training:
            ring_enqueue(self.queue, self.queue_ptr, distributed.gather_no_grad(z[0]))
        return {"loss": loss, **metrics}
