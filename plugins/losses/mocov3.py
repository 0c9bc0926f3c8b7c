"""MoCo v3's loss: symmetric InfoNCE of the online predictions against the momentum keys of the whole batch."""

from __future__ import annotations

from typing import Annotated, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import checked, distributed, loss_kit


def mocov3(queries: Sequence[Tensor], keys: Sequence[Tensor], temperature: float) -> tuple[Tensor, dict[str, Tensor]]:
    """MoCo v3's symmetric InfoNCE of two views' queries ``(n, D)`` against the other view's keys (gathered
    from every rank without gradients): the scalar loss and the detached metrics ``contrastive_acc``,
    ``pos_cosine``, ``neg_cosine`` (see :class:`MoCoV3Loss`). At least float32, also under autocast."""
    n = queries[0].shape[0]
    dtype = loss_kit.compute_dtype(queries, keys)
    with loss_kit.autocast_off(queries[0]):
        q = [F.normalize(t.to(dtype), dim=1) for t in queries]
        k = [F.normalize(distributed.gather_no_grad(t.detach()).to(dtype), dim=1) for t in keys]
        own = distributed.rank() * n + torch.arange(n, device=q[0].device)  # this rank's images among the keys
        cos = [q[0] @ k[1].T, q[1] @ k[0].T]  # (n, N) per direction
        loss = sum(F.cross_entropy(c / temperature, own) for c in cos) * (2 * temperature)

        with torch.no_grad():
            c = torch.cat([x.detach() for x in cos])
            targets = torch.cat([own, own])
            rows = torch.arange(len(targets), device=c.device)
            acc = (c.argmax(dim=1) == targets).to(dtype).mean()
            pos = c[rows, targets]
            neg_cos = ((c.sum(dim=1) - pos) / (c.shape[1] - 1)).mean()
    return loss, {"contrastive_acc": acc, "pos_cosine": pos.mean(), "neg_cosine": neg_cos}


@checked
class MoCoV3Loss(nn.Module):
    r"""MoCo v3: InfoNCE of each view's query against the other view's momentum keys, batch as negatives.

    Chen, Xie and He (2021), "An Empirical Study of Training Self-Supervised Vision Transformers",
    ICCV 2021 (arXiv:2104.02057), Algorithm 1 and the official ``moco/builder.py``. No queue: the keys
    of the other images in the (global) batch are the negatives.

    Input: the online branch's predictions of exactly two global views (``out.predictions``; the recipe
    needs a ``predictor:`` and a ``target:`` section) and the momentum target's projections of the same
    views (``out.target_projections``, stop-gradient). Row ``n`` of every tensor comes from image ``n``;
    local views are ignored. With ``q_i = normalize(prediction of view i)`` and ``k_j =
    normalize(target projection of view j)``,

        ctr(q, k) = 2 tau * mean_n -log( exp(q_n.k_n / tau) / sum_m exp(q_n.k_m / tau) )
        loss      = ctr(q_1, k_2) + ctr(q_2, k_1)

    The factor ``2 tau`` is the official code's (it makes the gradient's scale independent of ``tau``);
    the sum of the two directions is Algorithm 1's. The math runs in at least float32, also under
    autocast.

    Across ranks (torchrun): the keys of every rank are gathered (no gradient, as in the official
    ``concat_all_gather``), so ``m`` runs over the global batch; each rank's loss is the mean over its
    own queries, and DDP's mean of the ranks' gradients is the single-process gradient of the global
    batch.

    Args:
        temperature: ``tau > 0`` (the paper: 0.2 for ViTs, 1.0 for ResNets).

    Returns (from ``forward``): the scalar ``"loss"`` and detached 0-dim metrics: ``contrastive_acc``
    (fraction of queries whose own key has the highest logit), ``pos_cosine`` and ``neg_cosine``
    (mean cosine of query and own key, and of query and the other images' keys).
    """

    main_metric = "contrastive_acc"  # shown on the console each epoch
    reads = frozenset({"online.predictions", "target.projections"})

    def __init__(self, temperature: Annotated[float, loss_kit.temperature_range(
            "MoCo v3 uses 0.2 for ViTs, 1.0 for ResNets")] = 0.2):
        super().__init__()
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, out: Any) -> dict[str, Tensor]:
        global_idx = loss_kit.global_view_indices(self, out, exactly=2)
        predictions = loss_kit.required_predictions(self, out)
        queries = [predictions[i] for i in global_idx]
        keys = loss_kit.required_target_projections(self, out)
        n, _ = loss_kit.same_shape(self, "the global views' predictions and target projections", queries + keys)
        loss_kit.at_least_two_images(self, n, "have negatives")
        loss, metrics = mocov3(queries, keys, self.temperature)
        return {"loss": loss, **metrics}
