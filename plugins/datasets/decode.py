"""Decoding an image file into the uint8 square a data set serves: the shorter side resized to ``size``,
the center cropped, in grayscale or RGB (or, aspect kept, the whole image letterboxed on the square). Shared by the folder and shard readers so both serve the same
pixels for the same file."""

from __future__ import annotations

from typing import IO, Union
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# What PIL raises on a file it cannot decode: UnidentifiedImageError and truncation are OSErrors;
# some plugins raise SyntaxError or ValueError on malformed headers.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def square_image(source: Union[Path, IO[bytes]], size: int, mode: str) -> Image.Image:
    """Decode ``source`` (a path or an open binary file) as a ``size`` x ``size`` image in ``mode``
    ("L" or "RGB"); raises one of ``DECODE_ERRORS`` when it is not a readable image."""
    with Image.open(source) as image:
        # Lets the JPEG decoder scale down by 2/4/8 while decoding (never below `size`): much less work
        # for photos far larger than the target, which is the common case.
        image.draft(mode, (size, size))
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # avoids PIL's warning about palette transparency
        image = image.convert(mode)  # forces the full decode inside the `try` of the caller
    # Resize the shorter side to `size` and center-crop, done as one resample of the centered square
    # (same result, and only the kept pixels are interpolated). PIL's bilinear filter widens its
    # support when shrinking, i.e. it is antialiased.
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def letterboxed_image(source: Union[Path, IO[bytes]], size: int, mode: str) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Decode ``source`` whole, its aspect ratio kept: resized so that its longer side is ``size`` and
    centered on a black ``size`` x ``size`` canvas. Returns the canvas and the image's place on it,
    ``(top, left, height, width)``, for a crop on the device that samples inside the image only (as a
    crop from the original file would); raises one of ``DECODE_ERRORS`` as ``square_image`` does."""
    with Image.open(source) as image:
        image.draft(mode, (size, size))  # the decoder's 2/4/8 downscaling, never below `size` on either side
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert(mode)
    w, h = image.size
    scale = size / max(w, h)
    width, height = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(mode, (size, size))
    top, left = (size - height) // 2, (size - width) // 2
    canvas.paste(image.resize((width, height), Image.Resampling.BILINEAR), (left, top))
    return canvas, (top, left, height, width)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 (C, H, W). np.array copies into a writable array (torch warns on PIL's read-only buffer)."""
    array = np.array(image, dtype=np.uint8).reshape(image.size[1], image.size[0], -1)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
