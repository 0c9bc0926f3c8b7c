"""A FIFO ring buffer of vectors kept in a module's buffers (MoCo's queue of negative keys)."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def ring_enqueue(queue: Tensor, ptr: Tensor, items: Tensor) -> None:
    """Write ``items`` (n, D) into the ring buffer ``queue`` (size, D) in place, oldest entries first out.

    ``ptr`` is a 0-dim integer tensor: the row the next item goes to. Item ``t`` lands in row
    ``(ptr + t) % size``, so a write that runs past the last row wraps around to row 0, and ``ptr``
    becomes ``(ptr + n) % size``. When ``n > size`` the result is the same as writing the items one
    by one: only the newest ``size`` items remain. ``items`` are copied (no gradient) and cast to the
    queue's dtype.
    """
    size = queue.shape[0]
    n = items.shape[0]
    if n == 0:
        return
    skipped = max(n - size, 0)  # the first n - size items would be overwritten within this same write
    items = items[skipped:]
    # The rows are computed on the queue's device from the pointer there: the host never reads it.
    rows = (ptr + skipped + torch.arange(items.shape[0], device=queue.device)) % size
    queue.index_copy_(0, rows, items.detach().to(device=queue.device, dtype=queue.dtype))
    ptr.copy_((ptr + n) % size)
