"""Each embedding's nearest neighbours by cosine similarity (``cl-run embed --nearest K``): exact, on the device,
a block of rows at a time so that the similarity matrix is never whole (N x N would not fit for large N)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Similarities computed at once: 2^26 floats are 256 MB, whatever the number of rows.
BLOCK = 1 << 26


@torch.no_grad()
def nearest(embeddings: Tensor, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For each row of ``embeddings`` (N, D), the ``k`` other rows most cosine-similar to it, most similar
    first: their row numbers (N, k) int64 and similarities (N, k) float32, on the CPU."""
    n = embeddings.shape[0]
    if not 0 < k < n:
        raise ValueError(f"nearest: k={k} needs 0 < k < {n} (the rows other than the row itself)")
    x = F.normalize(embeddings.to(device, torch.float32), dim=1)
    rows = max(1, min(n, BLOCK // n))
    indices, similarities = torch.empty(n, k, dtype=torch.long), torch.empty(n, k, dtype=torch.float32)
    for start in range(0, n, rows):
        block = x[start:start + rows] @ x.T
        own = torch.arange(block.shape[0], device=device)
        block[own, own + start] = float("-inf")  # an image is not its own neighbour
        values, found = block.topk(k, dim=1)
        indices[start:start + rows], similarities[start:start + rows] = found.cpu(), values.cpu()
    return indices, similarities
