"""MoCo's loss: InfoNCE between online queries and momentum keys, with a queue of past keys as negatives."""

from __future__ import annotations

from typing import Annotated, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import Range, checked, distributed, loss_kit
from clrun.plugins.losses.queue import ring_enqueue


def moco(queries: Sequence[Tensor], keys: Sequence[Tensor], queue: Tensor, temperature: float
         ) -> tuple[Tensor, dict[str, Tensor], list[Tensor]]:
    """MoCo's InfoNCE of the global views' queries ``(N, D)`` against the other views' keys (detached here)
    and the ``queue`` ``(K, D)`` of unit negatives. Returns the scalar loss, the detached metrics
    ``contrastive_acc``, ``logit_entropy``, ``pos_cosine``, ``neg_cosine`` (see :class:`MoCoLoss`), and
    the unit keys, which the caller enqueues. At least float32, also under autocast."""
    g = len(queries)
    dtype = loss_kit.compute_dtype(queries, keys)  # fp16/bf16 -> fp32, fp64 stays
    with loss_kit.autocast_off(queries[0]):
        q = [F.normalize(t.to(dtype), dim=1) for t in queries]
        k = [F.normalize(t.detach().to(dtype), dim=1) for t in keys]
        # A copy: the queue is written after the loss, and autograd keeps this operand for the backward pass.
        queue = queue.detach().to(dtype=dtype, copy=True)
        neg = [qi @ queue.T for qi in q]  # (N, queue_size) cosines, once per query view
        lse_neg = [torch.logsumexp(c / temperature, dim=1) for c in neg]
        losses, pos = [], []
        for i in range(g):
            for j in range(g):
                if i != j:
                    p = (q[i] * k[j]).sum(dim=1)  # (N,) positive cosines
                    s = p / temperature
                    # -log softmax at index 0 of [s, neg / tau]
                    losses.append((torch.logaddexp(s, lse_neg[i]) - s).mean())
                    pos.append((i, p))
        loss = torch.stack(losses).mean()

        with torch.no_grad():
            # H = log Z - E_p[logit], the queue part's expectation taken under its own softmax.
            neg_mean_logit = [(F.softmax(c / temperature, dim=1) * c / temperature).sum(dim=1) for c in neg]
            entropy = []
            for i, p in pos:
                s_ = p.detach() / temperature
                log_z = torch.logaddexp(s_, lse_neg[i].detach())
                expected = (s_ - log_z).exp() * s_ + (lse_neg[i].detach() - log_z).exp() * neg_mean_logit[i]
                entropy.append(log_z - expected)
            entropy = torch.cat(entropy).mean()
            max_neg = [c.max(dim=1).values for c in neg]
            acc = torch.cat([(p.detach() >= max_neg[i]).to(dtype) for i, p in pos]).mean()
            pos_cos = torch.cat([p.detach() for _, p in pos]).mean()
            neg_cos = torch.stack([c.detach().mean() for c in neg]).mean()
    metrics = {"contrastive_acc": acc, "logit_entropy": entropy, "pos_cosine": pos_cos, "neg_cosine": neg_cos}
    return loss, metrics, k


@checked
class MoCoLoss(nn.Module):
    r"""Momentum Contrast: InfoNCE of online queries against momentum keys and a FIFO queue of old keys.

    He, Fan, Wu, Xie and Girshick (2020), "Momentum Contrast for Unsupervised Visual Representation
    Learning", CVPR 2020 (arXiv:1911.05722), eq. (1) and Algorithm 1; Chen, Fan, Girshick and He
    (2020), "Improved Baselines with Momentum Contrastive Learning" (MoCo v2, arXiv:2003.04297) for
    the MLP head, ``tau = 0.2`` and the defaults; symmetrized over the global views as solo-learn's
    ``mocov2plus`` does.

    Input: the online projections of the ``G >= 2`` global views (``out.projections``, each
    ``(N, D)``) and the momentum target network's projections of the same views
    (``out.target_projections``, each ``(N, D)``; entry ``k`` is the ``k``-th global view). Row ``n``
    of every tensor comes from image ``n``; local views are ignored. With the queries
    ``q_i = normalize(projection of global view i)``, the keys ``k_j = normalize(target projection of
    global view j)`` (a stop-gradient) and the queue ``Q`` of ``queue_size`` unit vectors (rows),

        l(q, k)_n = -log( exp(q_n.k_n / tau) / (exp(q_n.k_n / tau) + sum_m exp(q_n.Q_m / tau)) )
        loss      = mean over ordered pairs (i, j), i != j, of mean_n l(q_i, k_j)_n

    i.e. a cross entropy over the logits ``[q_n.k_n, q_n.Q^T] / tau`` with target index 0; with two
    global views ``loss = (l(q_1, k_2) + l(q_2, k_1)) / 2``. The normalization and products run in
    at least float32, also under autocast (float64 inputs stay float64).

    After the loss, in training mode only (``self.training``), the keys of all global views of the
    batch (``G * N`` rows, in global-view order) are copied into the queue, first in first out: the
    ``queue`` buffer ``(queue_size, D)`` is a ring and the ``queue_ptr`` buffer (0-dim int64) is the
    row the next key goes to; a write that passes the last row wraps around, and a write of more
    than ``queue_size`` keys keeps the newest. Both are persistent buffers, so ``state_dict()``
    holds the whole state. The queue starts as random unit vectors (from torch's global RNG), as in
    MoCo; the first ``queue_size / (G N)`` steps therefore use some random negatives.

    Across ranks (torchrun): the loss is a mean of per-query terms, so each rank computes it on its own
    queries and keys (DDP's mean of the ranks' gradients is the global batch's gradient), and the
    queue receives the keys of every rank (gathered without gradients, ``G * N_global`` rows per step
    in global-view, then rank, order): the queues stay identical on all ranks, and equal to the queue
    of a single process training on the concatenated batch. MoCo's shuffled BatchNorm of the key
    encoder is not reproduced; SyncBatchNorm (``train.sync_batchnorm``) is the alternative.

    Args:
        in_dim:      the projections' width ``D`` (injected by the training loop; sizes the queue).
        queue_size:  number of negative keys kept (MoCo: 65536; MoCo v2 on CIFAR often 4096).
        temperature: ``tau > 0`` (MoCo v1: 0.07, MoCo v2: 0.2).

    Returns (from ``forward``): a dict with the scalar ``"loss"`` and detached 0-dim metrics:

        contrastive_acc: fraction of the (pair, image) queries whose positive key has the highest
                         logit (top-1 accuracy; a tie counts for the positive, like ``argmax``);
        logit_entropy:   mean entropy (nats) of the softmax over [positive, queue]; ``log(1 + K)`` for
                         uniform similarities, near 0 when the task is easy (a hardness signal);
        pos_cosine:      mean cosine similarity of query and positive key over all pairs;
        neg_cosine:      mean cosine similarity of the queries and the queue entries.
    """

    main_metric = "contrastive_acc"  # shown on the console each epoch
    reads = frozenset({"online.projections", "target.projections"})

    def __init__(self, in_dim: Annotated[int, Range(min=1, hint="the projections' width, set by the training loop")],
                 queue_size: Annotated[int, Range(min=1, hint="MoCo uses 65536; keep it a few times the batch size")] = 65536,
                 temperature: Annotated[float, loss_kit.temperature_range("MoCo v2 uses 0.2, MoCo v1 0.07")] = 0.2):
        super().__init__()
        self.in_dim, self.queue_size, self.temperature = in_dim, queue_size, float(temperature)
        # Random unit vectors, drawn from torch's global RNG (seeded by the run), as in MoCo.
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, self.in_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, queue_size={self.queue_size}, temperature={self.temperature}"

    def _inputs(self, out: Any) -> tuple[list[Tensor], list[Tensor]]:
        targets = loss_kit.required_target_projections(self, out)
        global_idx = loss_kit.global_view_indices(
            self, out, why="each view's query is matched with the key of another global view"
        )
        queries = [out.projections[i] for i in global_idx]
        loss_kit.batch_of_width(self, "the global views' projections and target projections", queries + targets, self.in_dim)
        return queries, targets

    def forward(self, out: Any) -> dict[str, Tensor]:
        queries, targets = self._inputs(out)
        loss, metrics, k = moco(queries, targets, self.queue, self.temperature)
        if self.training:
            # Every rank's keys, view by view: each rank's queue gets the same rows in the same order.
            ring_enqueue(self.queue, self.queue_ptr, torch.cat([distributed.gather_no_grad(kv) for kv in k], dim=0))
        return {"loss": loss, **metrics}
