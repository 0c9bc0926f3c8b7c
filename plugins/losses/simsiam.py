"""SimSiam's loss: negative cosine between predictions and stop-gradient projections of another view."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import checked, loss_kit


def simsiam(predictions: Sequence[Tensor], projections: Sequence[Tensor], global_views: Sequence[int],
            stop_gradient: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """SimSiam's negative cosine: every view's prediction ``(N, D)`` against the projection of each other
    global view (``projections[k]`` is view ``global_views[k]``'s; detached unless ``stop_gradient`` is
    false). The scalar loss and the detached metric ``output_std_ratio`` (see :class:`SimSiamLoss`)."""
    n, d = predictions[0].shape
    dtype = loss_kit.compute_dtype(predictions, projections)  # fp16/bf16 -> fp32, fp64 stays
    with loss_kit.autocast_off(predictions[0]):
        p = [F.normalize(x.to(dtype), dim=1) for x in predictions]
        z = [F.normalize((x.detach() if stop_gradient else x).to(dtype), dim=1) for x in projections]
        terms = []
        for k, j in enumerate(global_views):
            for i in range(len(p)):
                if i != j:
                    terms.append(-(p[i] * z[k]).sum(dim=1).mean())
        loss = torch.stack(terms).mean()

        with torch.no_grad():
            if n < 2:  # no spread to measure (torch.std would warn every step)
                std_ratio = z[0].new_full((), float("nan"))
            else:
                std_ratio = torch.stack([zk.std(dim=0).mean() for zk in z]).mean() * math.sqrt(d)
    return loss, {"output_std_ratio": std_ratio}


@checked
class SimSiamLoss(nn.Module):
    r"""The symmetrized negative cosine similarity of SimSiam, with a stop-gradient on the targets.

    Chen and He (2021), "Exploring Simple Siamese Representation Learning", CVPR 2021
    (arXiv:2011.10566), eqs. (1) to (4).

    Input: the online predictor's outputs ``p_i`` for every view ``i`` (``out.predictions``, each of
    shape ``(N, D)``) and the online projector's outputs ``z_j`` of the global views
    (``out.projections``, each ``(N, D)``); row ``n`` of every tensor comes from image ``n``. There is
    no target network: the targets are the online projections themselves, detached (the paper's
    ``stopgrad``), so they receive no gradient from the term they are the target of; view ``j`` still
    gets gradient through its own prediction ``p_j``. With

        D(p, z) = -(1/N) sum_n cos(p_n, stopgrad(z_n))

    the loss is the mean over the pairs (view ``i`` predicts global view ``j``, ``i != j``):

        loss = mean_{global view j, view i != j} D(p_i, z_j)

    which for two global views is the paper's ``L = D(p_1, z_2)/2 + D(p_2, z_1)/2``, in ``[-1, 1]``.
    Local views (multi-crop) only predict the global views. The normalization and products run in at
    least float32, also under autocast (float64 inputs stay float64).

    Its predictor (the paper: an MLP 2048 -> 512 -> 2048 with a bottleneck) is the recipe's
    ``predictor:`` section.

    Across ranks (torchrun): the loss is a mean over images of per-image terms, so each rank computes
    it on its own images, unchanged, and DDP's mean of the ranks' gradients is the global batch's
    gradient. ``output_std_ratio`` is measured on each rank's images and averaged over ranks.

    Args:
        stop_gradient: the paper's ``stopgrad`` on the targets (default). ``False`` reproduces its
            ablation (section 4.1, Fig. 2): gradients flow into the targets too and the outputs collapse
            to a constant within a few epochs. For studying collapse (and testing the collapse alarm)
            only.
        require_predictor: ``False`` lets the loss compare the projections directly when the recipe has
            no predictor (the paper's "no predictor" ablation, Table 1, which collapses as well).

    Returns (from ``forward``): a dict with the scalar ``"loss"`` and the detached 0-dim metric

        output_std_ratio: the paper's collapse indicator (section 4.1, Fig. 2): the standard deviation
                          over the batch of the l2-normalized global projections ``z / ||z||``,
                          averaged over the ``D`` channels and multiplied by ``sqrt(D)``; about 1 for
                          well-spread outputs (the std of a random unit vector's entries is
                          ``1/sqrt(D)``), 0 when the outputs have collapsed to a constant. Averaged over
                          the global views; the unbiased std, so NaN for a batch of one image.
    """

    main_metric = "output_std_ratio"  # shown on the console each epoch
    # The predictions, or with require_predictor: false and no predictor, the projections in their place.
    reads = frozenset({"online.predictions", "online.projections"})
    # Each image's predictions are compared with its own projections: micro-batches may accumulate it.
    per_image_mean = True

    def __init__(self, stop_gradient: bool = True, require_predictor: bool = True) -> None:
        super().__init__()
        self.stop_gradient = stop_gradient
        self.require_predictor = require_predictor
        if not require_predictor:  # the "no predictor" ablation compares the projections
            self.reads = frozenset({"online.projections"})

    def extra_repr(self) -> str:
        return f"stop_gradient={self.stop_gradient}, require_predictor={self.require_predictor}"

    def forward(self, out: Any) -> dict[str, Tensor]:
        if getattr(out, "predictions", None) is None and not self.require_predictor:
            predictions = list(out.projections)  # the "no predictor" ablation: projections predict each other
        else:
            predictions = loss_kit.required_predictions(self, out)
        global_idx = loss_kit.global_view_indices(
            self, out, why="each view's prediction is compared with the projection of another global view"
        )
        shape = loss_kit.same_shape(self, "every view's predictions", predictions)
        projections = [out.projections[j] for j in global_idx]
        loss_kit.shaped_like_predictions(self, "global projections", projections, shape)
        loss, metrics = simsiam(predictions, projections, global_idx, self.stop_gradient)
        return {"loss": loss, **metrics}
