"""``clrun/random_resized_crop``: the papers' RandomResizedCrop, batched on the device, that crops inside
each image's place on its canvas.

A data set that keeps aspect ratios (``clrun/image_folder`` with ``keep_aspect: true``) serves every image
whole, letterboxed on a square, with its place ``[top, left, height, width]``. This op samples each crop's
area and aspect ratio relative to that place, and inside it, as torchvision's ``RandomResizedCrop`` does on
the original file (10 tries, then the central crop with the ratio clamped), so no crop shows the canvas's
padding and a wide image's sides are not lost. Without places it crops from the whole input, like
``kornia/RandomResizedCrop``. The crops are cut and resized by ``resized_crops``, as kornia's
``RandomResizedCrop`` cuts them in slice mode (the same pixels for the same box; one batched kernel off
the CPU), and ``crop_copies`` cuts the copies of a view drawn several times from one batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from clrun import ComponentError, checked
from clrun.plugins.augmentations.resized_crops import resized_crops

TRIES = 10  # torchvision's attempts at a crop that fits before it falls back to the central one


@checked
class RandomResizedCrop(nn.Module):
    """size: the output's (height, width) or side; scale: the range of the crop's area as a share of the
    image's; ratio: the range of its width / height (drawn log-uniformly); resample, align_corners: as
    in kornia's op. (The pairs' checks relate their two elements, so they are here, not in the signature.)"""

    takes_places = True  # Views hands this op the batch's places

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), resample: str = "BILINEAR", align_corners: bool = True) -> None:
        super().__init__()
        from kornia.constants import Resample  # here, not at the top: listing components must not import kornia

        name = self.component_name
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or min(size) < 1:
            raise ComponentError(f"{name}: size must be a side or [height, width] of at least 1, got {size!r}",
                                 argument="size")
        if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise ComponentError(f"{name}: scale must be [low, high] with 0 < low <= high <= 1, got {list(scale)!r}",
                                 argument="scale")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ComponentError(f"{name}: ratio must be [low, high] with 0 < low <= high, got {list(ratio)!r}",
                                 argument="ratio")
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.size = size
        self.resample = Resample.get(resample).name.lower()  # kornia's names, and its error for another
        self.align_corners = align_corners

    def forward(self, images: Tensor, places: Tensor | None = None) -> Tensor:
        """``images``: (B, C, H, W); ``places``: (B, 4) ``[top, left, height, width]`` per image, or None
        for the whole images."""
        return self.crop_copies(images, 1, places)

    def crop_copies(self, images: Tensor, copies: int, places: Tensor | None = None) -> Tensor:
        """What ``self(images.repeat(copies, 1, 1, 1), places.repeat(copies, 1))`` gives (the same draws, the
        same pixels): copy k of image i at row k B + i, each with its own box, without the full-size copies."""
        b, _, h, w = images.shape
        # The boxes are drawn on the host, in float64 as torchvision's Python floats (which some devices
        # lack): a few numbers per image, the same draws on every device, and read without a device sync.
        places = torch.tensor([[0, 0, h, w]]).expand(b, 4) if places is None else places.cpu()
        boxes = crop_boxes(places.repeat(copies, 1), self.scale, self.ratio)
        return resized_crops(images, boxes, self.size, self.resample, self.align_corners,
                             source=torch.arange(b).repeat(copies))


def crop_boxes(places: Tensor, scale: tuple[float, float], ratio: tuple[float, float]) -> Tensor:
    """One crop per place, drawn as torchvision's ``RandomResizedCrop.get_params`` draws it on an image of
    the place's size, as kornia's box corners (B, 4, 2): (x, y) of top-left, top-right, bottom-right,
    bottom-left, inclusive."""
    top, left, height, width = (places[:, k, None].double() for k in range(4))
    b = places.shape[0]
    area = height * width * torch.empty(b, TRIES, dtype=torch.float64).uniform_(*scale)
    log_ratio = torch.empty(b, TRIES, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.double().argmax(dim=1, keepdim=True)  # the first try that fits, as torchvision takes it
    found = fits.any(dim=1, keepdim=True)
    w, h = w.gather(1, first), h.gather(1, first)
    # None fits: the whole place, cut to the nearest allowed ratio, centered (torchvision's fallback).
    place_ratio = width / height
    fallback_w = torch.where(place_ratio < ratio[0], width, torch.where(place_ratio > ratio[1], (height * ratio[1]).round(), width))
    fallback_h = torch.where(place_ratio < ratio[0], (width / ratio[0]).round(), height)
    w, h = torch.where(found, w, fallback_w), torch.where(found, h, fallback_h)
    u = torch.rand(b, 2, dtype=torch.float64)
    y = torch.where(found, (u[:, :1] * (height - h + 1)).floor(), ((height - h) / 2).floor())
    x = torch.where(found, (u[:, 1:] * (width - w + 1)).floor(), ((width - w) / 2).floor())
    x0, y0 = (left + x).squeeze(1), (top + y).squeeze(1)
    x1, y1 = x0 + w.squeeze(1) - 1, y0 + h.squeeze(1) - 1
    corners = [torch.stack(c, dim=1) for c in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    return torch.stack(corners, dim=1).float()
