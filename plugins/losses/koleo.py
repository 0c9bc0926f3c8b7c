"""KoLeo: the Kozachenko-Leonenko differential entropy estimator as a regularizer (DINOv2's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clrun import ComponentError, distributed


def koleo(features: Tensor, eps: float = 1e-8) -> Tensor:
    r"""``-mean_n log(||u_n - u_{nn(n)}|| + eps)`` for the unit vectors ``u_n`` of ``features`` ``(N, D)``.

    Sablayrolles et al. (2019), "Spreading vectors for similarity search" (the estimator), as DINOv2
    uses it (Oquab et al. 2023; ``KoLeoLoss`` in facebookresearch/dinov2): ``nn(n)`` is the nearest other
    vector by cosine, and the distance is ``torch.nn.PairwiseDistance(2, eps)``'s (``eps`` added to the
    difference). Minimizing it pushes every image's features away from their nearest neighbour, so the
    batch spreads over the sphere. Gradients reach both the vector and its neighbour.

    Across ranks (torchrun) the neighbours are searched among every rank's vectors (gathered with
    gradients), so the term is the single-process one on the whole batch; LightlySSL's searches its own
    rank's only, which changes the estimate with the number of processes. That is also the guard for small
    batches: DINOv2 computes it per GPU (about 64 images), where a continued run on one GPU with a batch of
    16 would estimate it from 16 neighbours; gathered, it sees the whole step's batch. Fewer than 2 images
    is an error (one image is its own nearest neighbour: a distance of 0, a term of -log(eps)).
    """
    u = F.normalize(features, eps=eps, dim=-1)
    everyone = distributed.gather(u)
    if len(everyone) < 2:  # a shape, known on the host: no device read
        raise ComponentError(
            f"KoLeo needs at least 2 images per step to find each one's nearest neighbour; this step has "
            f"{len(everyone)} (data.batch_size over every process and micro-batch): raise the batch size or set "
            f"koleo_weight: 0")
    n = len(u)
    rows = torch.arange(n, device=u.device)
    mine = rows + distributed.rank() * n
    with torch.no_grad():
        cosine = u @ everyone.T
        cosine[rows, mine] = -2.0  # never one's own neighbour (cosines are >= -1)
        neighbour = cosine.argmax(dim=1)
    distance = F.pairwise_distance(u, everyone[neighbour], p=2, eps=eps)
    return -torch.log(distance + eps).mean()
