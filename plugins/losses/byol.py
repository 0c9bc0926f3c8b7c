"""BYOL's loss: online predictions regress the momentum target network's projections."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import checked, loss_kit


def byol(predictions: Sequence[Tensor], targets: Sequence[Tensor], global_views: Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
    """BYOL's symmetrized normalized MSE: every view's prediction ``(N, D)`` against the target projection of
    each other global view (``targets[k]`` is view ``global_views[k]``'s, detached here). The scalar loss
    and the detached metric ``pos_cosine`` (see :class:`BYOLLoss`); at least float32."""
    dtype = loss_kit.compute_dtype(predictions, targets)  # fp16/bf16 -> fp32, fp64 stays
    with loss_kit.autocast_off(predictions[0]):
        p = [F.normalize(x.to(dtype), dim=1) for x in predictions]
        t = [F.normalize(x.detach().to(dtype), dim=1) for x in targets]  # stop-gradient
        loss = p[0].new_zeros(())
        cosines = []
        for k, j in enumerate(global_views):
            for i in range(len(p)):
                if i == j:
                    continue
                cos = (p[i] * t[k]).sum(dim=1)  # (N,)
                loss = loss + (2.0 - 2.0 * cos).mean()
                cosines.append(cos.detach().mean())
        pos_cosine = torch.stack(cosines).mean()
    return loss, {"pos_cosine": pos_cosine}


@checked
class BYOLLoss(nn.Module):
    r"""The normalized mean squared error of BYOL, symmetrized over the views.

    Grill et al. (2020), "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
    NeurIPS 2020 (arXiv:2006.07733), eq. (2) and the symmetrized loss ``L + L~`` of section 3.1.

    Input: the online predictor's outputs ``p_i`` for every view ``i`` (``out.predictions``, each of
    shape ``(N, D)``) and the momentum target network's projections ``t_k`` of the global views
    (``out.target_projections``, each ``(N, D)``; entry ``k`` is the ``k``-th global view). Row ``n``
    of every tensor comes from image ``n``. For one pair, with ``cos`` the cosine similarity,

        l(p, t) = (1/N) sum_n || p_n/||p_n|| - t_n/||t_n|| ||^2 = (1/N) sum_n (2 - 2 cos(p_n, t_n))

    and the loss sums over the pairs (the paper's ``L + L~`` for two views):

        loss = sum_{global view j} sum_{view i != j} l(p_i, t_j)

    so with two global views it is ``l(p_1, t_2) + l(p_2, t_1)``, in ``[0, 8]``. Local views
    (multi-crop) only predict the global views' targets, as in solo-learn's BYOL; the target network
    does not see them. The targets are a stop-gradient: they are detached here, so they get no
    gradient even when they require one. The normalization and products run in at least float32,
    also under autocast (float64 inputs stay float64).

    BYOL has no loss hyper-parameters; its other ingredients are the recipe's ``predictor:`` head
    (the paper: an MLP 256 -> 4096 -> 256, like the projector) and ``target:`` section (momentum from
    0.996 to 1 on a cosine schedule).

    Across ranks (torchrun): every term is a mean over images of a per-image quantity, so each rank
    computes the loss on its own images, unchanged; DDP's mean of the ranks' gradients is the global
    batch's gradient. Nothing couples images except BatchNorm in the heads, whose statistics stay per
    rank unless ``train.sync_batchnorm`` is set (the paper uses synchronized BatchNorm).

    Returns (from ``forward``): a dict with the scalar ``"loss"`` and the detached 0-dim metric

        pos_cosine: the mean cosine similarity between predictions and targets over all pairs
                    (``1 - l / 2`` averaged over the pairs; 1 when every prediction hits its target).
    """

    main_metric = "pos_cosine"  # shown on the console each epoch
    reads = frozenset({"online.predictions", "target.projections"})
    # Each image's predictions regress its own target projections: micro-batches may accumulate it.
    per_image_mean = True

    def forward(self, out: Any) -> dict[str, Tensor]:
        predictions = loss_kit.required_predictions(self, out)
        targets = loss_kit.required_target_projections(self, out)
        global_idx = loss_kit.global_view_indices(
            self, out, why="each view's prediction regresses the target projection of another global view"
        )
        shape = loss_kit.same_shape(self, "every view's predictions", predictions)
        loss_kit.shaped_like_predictions(self, "target projections", targets, shape)
        loss, metrics = byol(predictions, targets, global_idx)
        return {"loss": loss, **metrics}
