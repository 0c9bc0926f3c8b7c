"""Deterministic DINO multi-crop views of Fashion-MNIST for the step-for-step parity tests.

The views are described by a *spec*, plain integers drawn once from a seed: for each training step and each
image of the batch, the training-split index, and for each crop its box in the 28 x 28 source image and a
horizontal-flip flag. The spec (not pixels) is what a fixture stores; ``render`` turns it into float64 tensors
with no randomness, so the official code and cl-run see the very same pixels.

Crops, in DINO's order (main_dino.py ``DataAugmentationDINO.__call__``): the global crops first, then the local
ones. A box is drawn as torchvision's ``RandomResizedCrop.get_params`` draws it (area fraction uniform in
``scale``, log aspect ratio uniform in ``log(ratio)``, 10 tries, then the central fallback), with Python's
``random.Random(seed)`` (its ``random()`` stream is stable across Python versions), so the spec does not move
with torch or numpy versions either.

Rendering, per crop: the uint8 image as float64 in [0, 1] (``ToTensor``), ``resized_crop`` bilinear without
antialiasing to ``size`` x ``size``, the flip, then ``(x - MEAN) / STD``; one channel. Colour jitter, blur and
solarization are left out: once the views are given, they are out of what the parity tests compare.

    spec = make_spec(seed=0)
    images, _ = load_train_images()
    crops = render(spec, step=0, images=images)   # [global 1, global 2, local 1, local 2], each (8, 1, S, S)
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

SOURCE = 28  # Fashion-MNIST images are 28 x 28
MEAN, STD = 0.286, 0.353
STEPS, BATCH = 30, 8
GLOBAL_CROPS, GLOBAL_SIZE, GLOBAL_SCALE = 2, 28, (0.4, 1.0)
LOCAL_CROPS, LOCAL_SIZE, LOCAL_SCALE = 2, 14, (0.1, 0.4)
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default
TRAIN_SIZE = 60000
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _randint(rng: random.Random, low: int, high: int) -> int:
    """An integer in [low, high], from one ``random()`` draw."""
    return low + min(int(rng.random() * (high - low + 1)), high - low)


def crop_box(rng: random.Random, scale: Sequence[float], ratio: Sequence[float] = RATIO,
             height: int = SOURCE, width: int = SOURCE) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's ``RandomResizedCrop.get_params`` (transforms.py), drawn from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * rng.random())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * rng.random())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(rng, 0, height - h), _randint(rng, 0, width - w), h, w
    # fallback: the central crop of the clamped aspect ratio
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def make_spec(seed: int, steps: int = STEPS, batch: int = BATCH, global_crops: int = GLOBAL_CROPS,
              local_crops: int = LOCAL_CROPS, global_scale: Sequence[float] = GLOBAL_SCALE,
              local_scale: Sequence[float] = LOCAL_SCALE, dataset_size: int = TRAIN_SIZE) -> dict:
    """The views of ``steps`` batches, as plain integer arrays (and the settings that made them).

    Returns a dict with
      ``index``: (steps, batch) int64, training-split indices (distinct within a step);
      ``boxes``: (steps, batch, crops, 4) int64, (top, left, height, width) in the source image;
      ``flip``:  (steps, batch, crops) int64, 1 = flip horizontally (after the crop);
      ``sizes``: (crops,) int64, the output side of each crop (globals first, then locals);
    and the settings ``seed``, ``mean``, ``std``, ``global_scale``, ``local_scale``, ``ratio``.
    """
    rng = random.Random(seed)
    scales = [tuple(global_scale)] * global_crops + [tuple(local_scale)] * local_crops
    crops = len(scales)
    index = np.zeros((steps, batch), dtype=np.int64)
    boxes = np.zeros((steps, batch, crops, 4), dtype=np.int64)
    flip = np.zeros((steps, batch, crops), dtype=np.int64)
    for step in range(steps):
        chosen: list[int] = []
        while len(chosen) < batch:
            i = _randint(rng, 0, dataset_size - 1)
            if i not in chosen:
                chosen.append(i)
        index[step] = chosen
        for b in range(batch):
            for c, scale in enumerate(scales):
                boxes[step, b, c] = crop_box(rng, scale)
                flip[step, b, c] = 1 if rng.random() < 0.5 else 0
    return {
        "seed": seed, "mean": MEAN, "std": STD, "ratio": list(RATIO),
        "global_scale": list(global_scale), "local_scale": list(local_scale),
        "global_crops": global_crops, "local_crops": local_crops,
        "sizes": np.array([GLOBAL_SIZE] * global_crops + [LOCAL_SIZE] * local_crops, dtype=np.int64),
        "index": index, "boxes": boxes, "flip": flip,
    }


def spec_to_json(spec: dict) -> dict:
    """The spec with its arrays as nested lists (for a JSON fixture)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in spec.items()}


def spec_from_json(data: dict) -> dict:
    """Inverse of ``spec_to_json``."""
    spec = dict(data)
    for key in ("index", "boxes", "flip", "sizes"):
        spec[key] = np.asarray(data[key], dtype=np.int64)
    return spec


def load_train_images(root: Path | str = DEFAULT_ROOT) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's training split: images (60000, 1, 28, 28) uint8 and labels (60000,) int64."""
    from clrun.plugins.datasets.fashion_mnist import FILES, read_split

    root = Path(root)
    images_file, labels_file = FILES["train"]
    return read_split(root / images_file, root / labels_file)


def render_crop(image: torch.Tensor, box: Sequence[int], flip: int, size: int, mean: float = MEAN,
                std: float = STD) -> torch.Tensor:
    """One view (1, size, size) float64 of a uint8 image (1, 28, 28)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    x = image.to(torch.float64) / 255.0
    top, left, h, w = (int(v) for v in box)
    x = TF.resized_crop(x, top, left, h, w, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=False)
    if flip:
        x = x.flip(-1)
    return (x - mean) / std


def render(spec: dict, step: int, images: torch.Tensor, crops: Sequence[int] | None = None) -> list[torch.Tensor]:
    """The views of one step: a list with one (batch, 1, S, S) float64 tensor per crop (globals first), as the
    official DataLoader collates ``DataAugmentationDINO``'s lists. ``crops``: which crops (default all)."""
    sizes = [int(s) for s in spec["sizes"]]
    crops = range(len(sizes)) if crops is None else crops
    out = []
    for c in crops:
        out.append(torch.stack([
            render_crop(images[int(spec["index"][step, b])], spec["boxes"][step, b, c], int(spec["flip"][step, b, c]),
                        sizes[c], spec["mean"], spec["std"])
            for b in range(spec["index"].shape[1])
        ]))
    return out
