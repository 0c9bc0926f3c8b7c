"""BYOL's loss: online predictions regress the momentum target network's projections."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import ComponentError
from clrun.plugins.losses.ntxent import _autocast_off

NEEDS_PREDICTOR = (
    "clrun/byol needs a predictor head on the online branch: add a `predictor:` section to the recipe "
    "(e.g. name: clrun/mlp)"
)
NEEDS_TARGET = (
    "clrun/byol needs a momentum target network: add a `target:` section to the recipe (e.g. momentum: 0.99)"
)


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

    def forward(self, out: Any) -> dict[str, Tensor]:
        predictions = getattr(out, "predictions", None)
        if predictions is None:
            raise ComponentError(NEEDS_PREDICTOR)
        targets = getattr(out, "target_projections", None)
        if targets is None:
            raise ComponentError(NEEDS_TARGET)
        global_idx = [i for i, g in enumerate(out.is_global) if g]
        if len(global_idx) < 2:
            raise ComponentError(
                f"clrun/byol needs at least 2 global views (each view's prediction regresses the target "
                f"projection of another global view); the recipe makes {len(global_idx)}. "
                "Use a global view section with count 2 (a section without `local: true`)."
            )
        if len(predictions) != len(out.is_global):
            raise ComponentError(
                f"clrun/byol got {len(predictions)} predictions for {len(out.is_global)} views; "
                "it needs one per view"
            )
        if len(targets) != len(global_idx):
            raise ComponentError(
                f"clrun/byol got {len(targets)} target projections for {len(global_idx)} global views; "
                "it needs one per global view"
            )
        shape = tuple(predictions[0].shape)
        if len(shape) != 2 or any(tuple(p.shape) != shape for p in predictions):
            raise ComponentError(
                "clrun/byol needs every view's predictions as (batch, dim) tensors of the same shape; got "
                + ", ".join(str(tuple(p.shape)) for p in predictions)
            )
        for t in targets:
            if tuple(t.shape) != shape:
                raise ComponentError(
                    f"clrun/byol needs target projections of the predictions' shape {shape}; got "
                    f"{tuple(t.shape)}. The predictor's output width must equal the projector's (out_dim)."
                )

        dtype = torch.float32
        for x in (*predictions, *targets):
            dtype = torch.promote_types(dtype, x.dtype)  # fp16/bf16 -> fp32, fp64 stays
        with _autocast_off(predictions[0].device.type):
            p = [F.normalize(x.to(dtype), dim=1) for x in predictions]
            t = [F.normalize(x.detach().to(dtype), dim=1) for x in targets]  # stop-gradient
            loss = p[0].new_zeros(())
            cosines = []
            for k, j in enumerate(global_idx):
                for i in range(len(p)):
                    if i == j:
                        continue
                    cos = (p[i] * t[k]).sum(dim=1)  # (N,)
                    loss = loss + (2.0 - 2.0 * cos).mean()
                    cosines.append(cos.detach().mean())
            pos_cosine = torch.stack(cosines).mean()
        return {"loss": loss, "pos_cosine": pos_cosine}
