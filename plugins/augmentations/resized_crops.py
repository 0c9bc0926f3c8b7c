"""Boxes cut out of a batch and resized to one size: the crop of ``kornia/RandomResizedCrop`` and of
``clrun/random_resized_crop``, whose boxes are drawn on the host.

Two ways to make the same pixels, chosen by the images' device:

* ``sliced`` (the CPU): kornia's slice mode, each box sliced out and resized by ``F.interpolate``, one call
  per box. On the CPU it is the faster (measured for the issue: 224 px crops in 0.47x the time of the batched
  kernel, 96 px in 0.84x), but on a GPU it is a Python loop of small launches (1,536 per DINO step).
* ``roi_aligned`` (any other device): every box of a call in one ``torchvision.ops.roi_align`` kernel.

Either way each box names the image it is cut from (``source``), so the copies of a view drawn several
times are cut from one batch, with no full-size copy of the images per copy.

Why roi_align rather than ``grid_sample``: it takes the image index with each box, where ``grid_sample``
needs its input repeated to the number of boxes; and with one sample per output pixel
(``sampling_ratio=1``) and boxes placed as below, each output pixel is exactly one bilinear sample at the
point ``F.interpolate(..., align_corners=True)`` samples, so the pixels are kornia's slice mode up to float
rounding (no area averaging: roi_align averages only with several samples per bin). It does bilinear
resizing only, and its border rule differs from ``F.interpolate``'s with ``align_corners=False`` (it reads
the pixel beyond the crop where interpolate repeats the crop's edge), so nearest and bicubic resampling and
``align_corners=False`` keep the sliced path on every device: the same pixels, the per-box loop.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_batched_on_cpu = False  # see batched_on_cpu()


@contextmanager
def batched_on_cpu() -> Iterator[None]:
    """Inside: the CPU takes the batched path too (tests compare the two paths on a machine without a GPU)."""
    global _batched_on_cpu
    before, _batched_on_cpu = _batched_on_cpu, True
    try:
        yield
    finally:
        _batched_on_cpu = before


def resized_crops(images: Tensor, boxes: Tensor, size: Sequence[int], resample: str = "bilinear",
                  align_corners: bool = True, source: Tensor | None = None) -> Tensor:
    """(K, C, h, w) crops of ``images`` (B, C, H, W), float.

    ``boxes``: (K, 4, 2) kornia's inclusive box corners (x, y): top-left, top-right, bottom-right,
    bottom-left, on the host (reading them costs no device sync); ``size``: (h, w); ``resample``: kornia's
    ``"nearest"``, ``"bilinear"`` or ``"bicubic"``; ``source``: (K,) the image each box is cut from, on
    the host (default: box k from image k).
    """
    size = (int(size[0]), int(size[1]))
    resample = resample.lower()
    source = torch.arange(boxes.shape[0]) if source is None else source
    batched = images.device.type != "cpu" or _batched_on_cpu
    if batched and resample == "bilinear" and align_corners and boxes.shape[0] > 0:
        return roi_aligned(images, boxes, source, size)
    return sliced(images, boxes, source, size, resample, align_corners)


def sliced(images: Tensor, boxes: Tensor, source: Tensor, size: tuple[int, int], resample: str,
           align_corners: bool) -> Tensor:
    """kornia's slice mode (``crop_by_indices``, eager) with a source image per box: each box sliced out
    and, unless it already has ``size``, resized by ``F.interpolate`` as kornia's RandomResizedCrop does."""
    # kornia's interpolation settings for slice mode: nearest on the half-pixel grid, which takes no
    # align_corners.
    mode = "nearest-exact" if resample == "nearest" else resample
    corners = None if mode == "nearest-exact" else align_corners
    # One read of the host boxes for the whole call (kornia truncates them to integers the same way).
    corner = boxes.to(torch.long)
    x0, x1, y0, y1 = torch.stack([corner[:, 0, 0], corner[:, 1, 0] + 1, corner[:, 0, 1], corner[:, 3, 1] + 1]).tolist()
    rows = source.tolist()
    out = images.new_empty(len(rows), images.shape[1], *size)
    for k, i in enumerate(rows):
        crop = images[i:i + 1, :, y0[k]:y1[k], x0[k]:x1[k]]
        out[k:k + 1] = crop if crop.shape[-2:] == size else F.interpolate(crop, size=size, mode=mode,
                                                                         align_corners=corners)
    return out


def roi_aligned(images: Tensor, boxes: Tensor, source: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear ``align_corners=True`` crops of every box in one ``roi_align`` call.

    ``F.interpolate`` with ``align_corners=True`` samples output column j of a crop starting at x0, w pixels
    wide, at x0 + j (w - 1) / (W - 1) (at x0 when W = 1). roi_align (``aligned=True``, one sample per bin)
    samples bin j of a box [s, e] at s - 0.5 + (j + 0.5)(e - s) / W; so a step of (w - 1) / (W - 1) per
    output pixel is the box s = x0 + 0.5 - step / 2, e = s + W step. Likewise for rows.
    """
    from torchvision.ops import roi_align  # here: only a batched crop pays for importing torchvision's ops

    height, width = size
    corner = boxes.to(torch.long).double()  # kornia's integer truncation, then exact arithmetic on the host
    x0, y0 = corner[:, 0, 0], corner[:, 0, 1]
    crop_w, crop_h = corner[:, 1, 0] - x0, corner[:, 3, 1] - y0  # (pixels - 1) of each crop
    step_x = crop_w / (width - 1) if width > 1 else torch.zeros_like(crop_w)
    step_y = crop_h / (height - 1) if height > 1 else torch.zeros_like(crop_h)
    start_x, start_y = x0 + 0.5 - step_x / 2, y0 + 0.5 - step_y / 2
    rois = torch.stack([source.double(), start_x, start_y, start_x + width * step_x, start_y + height * step_y], dim=1)
    # Coordinates need float32 at least: in half precision a coordinate above 256 loses whole pixels.
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    out = roi_align(work, uploaded(rois.to(work.dtype), work.device), output_size=size, spatial_scale=1.0,
                    sampling_ratio=1, aligned=True)
    return out.to(images.dtype)


def uploaded(host: Tensor, device: torch.device) -> Tensor:
    """``host`` on ``device`` without making the host wait for the device's queued work.

    On CUDA: pinned, then copied with ``non_blocking`` (a copy from pageable memory can wait for the
    stream); the pinned block is ours alone and the caching host allocator keeps it until the copy has
    run, so nothing changes it in flight. Elsewhere the ordinary copy (the CPU needs none; MPS may read a
    pageable source after the call returns, so a temporary is copied blocking there).
    """
    if host.device == device:
        return host
    if device.type == "cuda" and host.device.type == "cpu":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
