"""Sinkhorn-Knopp: soft, equipartitioned assignments of samples to prototypes (SwAV's codes)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clrun import distributed, loss_kit


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, iterations: int = 3, epsilon: float = 0.05) -> Tensor:
    r"""Codes for ``B`` samples over ``K`` prototypes from their scores, shape ``(B, K) -> (B, K)``.

    Caron et al. (2020), "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments" (arXiv:2006.09882), Sec. 3.1 and ``distributed_sinkhorn`` in the official code
    (facebookresearch/swav, main_swav.py). With ``Q = exp(scores / epsilon)^T`` (K x B):

        Q /= sum(Q)
        repeat ``iterations`` times:
            Q[k, :] /= sum_b Q[k, b];  Q /= K      # every prototype gets 1/K of the mass
            Q[:, b] /= sum_k Q[k, b];  Q /= B      # every sample gets 1/B of the mass
        return (B * Q)^T

    so each returned row (a sample's code) sums to 1 and, as the iterations converge, each column
    (a prototype) sums to ``B / K``. The same steps are run on ``log Q`` (log-sum-exp instead of
    sums), which subtracts the maxima before every ``exp``: no overflow for small ``epsilon`` and no
    all-zero row or column from underflow. The result equals the plain form up to rounding.

    Computed without gradient, in at least float32 (float64 stays float64).

    Across ranks (torchrun), as the official ``distributed_sinkhorn``: each rank passes its own
    samples' scores and the sums over samples run over the samples of all ranks (``B`` is the global
    count), so every rank gets its rows of the codes of the whole batch.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp expects scores of shape (batch, prototypes), got {tuple(scores.shape)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"sinkhorn_knopp: iterations must be an integer >= 0, got {iterations!r}")
    if not epsilon > 0:
        raise ValueError(f"sinkhorn_knopp: epsilon must be > 0, got {epsilon!r}")
    b, k = scores.shape
    dtype = loss_kit.compute_dtype(scores)
    log_q = scores.detach().to(dtype).T / epsilon  # (K, B)
    log_q = log_q - logsumexp_over_samples(log_q, everything=True)
    log_k, log_b = math.log(k), math.log(b * distributed.world_size())
    for _ in range(iterations):
        log_q = log_q - logsumexp_over_samples(log_q) - log_k  # rows: one per prototype
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b  # columns: one per sample
    return (log_q + log_b).exp().T


def logsumexp_over_samples(log_q: Tensor, everything: bool = False) -> Tensor:
    """log-sum-exp of ``log_q`` (K, B) over the samples of every rank: per prototype (K, 1), or over
    all elements (a scalar) when ``everything``."""
    if not distributed.active():
        return torch.logsumexp(log_q.reshape(-1), dim=0) if everything else torch.logsumexp(log_q, dim=1, keepdim=True)
    peak = distributed.all_reduce_max(log_q.amax() if everything else log_q.amax(dim=1, keepdim=True))
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    shifted = (log_q - peak).exp()
    total = shifted.sum() if everything else shifted.sum(dim=1, keepdim=True)
    return distributed.all_reduce_sum(total).log() + peak
