"""Representation-health metrics of a batch of embeddings. Inputs are (N, D) tensors of raw embeddings;
each function l2-normalizes what its formula is defined on, and computes in float64 (N is small, and
the log-mean-exp of uniformity loses digits in float32 near collapse).

References: Wang & Isola (2020), "Understanding Contrastive Representation Learning through Alignment
and Uniformity on the Hypersphere" (alignment, uniformity); Chen & He (2021), "Exploring Simple Siamese
Representation Learning", section 4.1 (the std of normalized outputs); Garrido et al. (2023), "RankMe"
(effective rank).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.detach().to(torch.float64), dim=1)


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(y)||^alpha over positive pairs (row i of x with row i of y), on the unit sphere.

    0 when every pair coincides, 2^alpha (4 for alpha=2) when every pair is antipodal. Lower is better.
    """
    return (_unit(x) - _unit(y)).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: Tensor, t: float = 2.0) -> float:
    """log E exp(-t ||f(x_i) - f(x_j)||^2) over the distinct pairs i < j, on the unit sphere.

    <= 0; exactly 0 when all embeddings are equal (collapse); about -4 (t=2) for points spread over a
    high-dimensional sphere. Lower is more uniform.
    """
    u = _unit(x)
    if len(u) < 2:
        return float("nan")
    sq_dist = torch.pdist(u).pow(2)
    return (torch.logsumexp(-t * sq_dist, dim=0) - math.log(len(sq_dist))).item()


def std_sqrt_d(x: Tensor) -> float:
    """Chen & He's collapse indicator: the std over the batch of the l2-normalized embeddings, averaged
    over the D channels, times sqrt(D). About 1 for isotropic embeddings (a random unit vector's entries
    have std 1/sqrt(D)), 0 when they all collapse to one vector."""
    u = _unit(x)
    if len(u) < 2:
        return float("nan")
    return (u.std(dim=0).mean() * math.sqrt(u.shape[1])).item()


def rankme(x: Tensor, eps: float = 1e-7) -> float:
    """RankMe: exp of the entropy of the normalized singular values of the (uncentered) embedding matrix.

    p_k = sigma_k / ||sigma||_1 + eps; RankMe = exp(-sum_k p_k log p_k), in [1, min(N, D)]: about 1 for
    rank-1 embeddings (collapse), D when all D singular values are equal. Compare runs of one method.
    """
    sigma = torch.linalg.svdvals(x.detach().to(torch.float64))
    p = sigma / sigma.sum().clamp_min(1e-300) + eps
    return torch.exp(-(p * p.log()).sum()).item()


def pair_cosines(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine similarities of the positive pairs (x_i, y_i), shape (N,), and of every other pairing
    (x_i, y_j), i != j, shape (N * (N - 1),): what the contrastive task must tell apart."""
    sims = _unit(x) @ _unit(y).T
    positive = sims.diagonal()
    negative = sims[~torch.eye(len(sims), dtype=torch.bool)]
    return positive, negative


def histogram(values: Tensor, bins: int = 40) -> dict[str, list]:
    """Counts of cosine similarities over [-1, 1] in ``bins`` equal bins (edges included, for plotting)."""
    counts = torch.histc(values.to(torch.float64), bins=bins, min=-1.0, max=1.0)
    edges = torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64)
    return {"edges": [round(e, 6) for e in edges.tolist()], "counts": [int(c) for c in counts.tolist()]}


def health_metrics(x: Tensor, y: Tensor) -> dict[str, float]:
    """All the signals for two views' embeddings of the same N images (row i of x and y: image i)."""
    positive, negative = pair_cosines(x, y)
    both = torch.cat([x, y])
    return {
        "alignment": alignment(x, y),
        "uniformity": (uniformity(x) + uniformity(y)) / 2,  # per view, as Wang & Isola do
        "std_sqrt_d": std_sqrt_d(both),
        "rankme": rankme(both),
        "pos_cosine": positive.mean().item(),
        "neg_cosine": negative.mean().item(),
    }
