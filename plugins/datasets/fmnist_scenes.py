"""Fashion-MNIST scenes: a small real segmentation task (per-pixel classes) for CPU runs and CI.

Each scene is a gray canvas holding 2 to 4 Fashion-MNIST items; its label map gives every pixel the class
of the item it shows, or "background". The pixels are the data set's own, so a dense evaluator scores an
encoder on real shapes, in seconds, on any machine with the Debian package `dataset-fashion-mnist`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from clrun import DataNotFoundError, Range, checked
from clrun.plugins.datasets.fashion_mnist import CLASSES, DEFAULT_ROOT, FILES, read_split

NAME = "clrun/fmnist_scenes"

# Fashion-MNIST's item backgrounds are 0 with a faint tail: per image about 8 pixels of value 1, 5 of 2,
# 3 of 3, falling to the items' own flat level (about 0.75 pixel per gray value) at 9 to 10 (both splits'
# histograms). From 10 on every value is about as common as the next, i.e. item pixels; below it the
# excess is noise around the item. Every item of both splits keeps at least 41 pixels at this threshold.
# The few pixels under 10 inside a dark item are background too: they look like it on the canvas.
FOREGROUND = 10
"""An item pixel of intensity >= FOREGROUND is foreground: it is drawn and labelled with the item's class."""

BACKGROUND = len(CLASSES)
"""The label of background pixels, 10: its own class, not 0 (0 is "T-shirt/top")."""

ITEM = 28
MIN_ITEMS, MAX_ITEMS = 2, 4

# A scene is redrawn (new positions, same items) until every item keeps this share of its foreground
# visible, so each class in a scene's item list is present in its label map, and recognizable.
MIN_VISIBLE = 0.25

# Scenes are composed this many at a time (bounds the temporary index tensors); a constant, so the random
# draws, hence the scenes, do not depend on the machine.
CHUNK = 1024


@checked
class FMNISTScenes(Dataset):
    """Gray ``size`` x ``size`` canvases, each with 2 to 4 Fashion-MNIST items, and their per-pixel labels.

    root:   folder holding Fashion-MNIST's four idx .gz files, as for ``clrun/fashion_mnist``.
    split:  the official split the items come from: "test" scenes hold test items only.
    scenes: how many canvases.
    size:   side of the canvas; at least 56, so that four 28 px items can all stay visible.
    seed:   seed of every draw (item count, items, positions); the same arguments give the same scenes on
            every machine.

    Items: ``(image, labels)``, ``image`` uint8 (1, size, size), ``labels`` int64 (size, size): the class
    (0..9, Fashion-MNIST's) of the item a pixel shows, or 10 ("background"). Attributes: ``num_classes``
    (11), ``ignore_index`` (255, no pixel carries it), ``class_names``.

    Foreground: an item pixel of intensity >= 10 (``FOREGROUND``, see the histogram note there). Items are
    drawn in order on a black canvas; a later item's foreground pixels replace what is under them, image
    and label alike, and its background pixels leave the canvas as it was. So a pixel is labelled with a
    class exactly when it is >= 10, and background pixels are 0. Positions are redrawn until every item
    keeps at least a quarter of its foreground visible (``MIN_VISIBLE``); this ends, since at size >= 56
    four items can sit apart.

    Also kept, for tests and inspection: ``items`` (scenes, 4) int64, the split's indices of each scene's
    items in drawing order, -1 past its count; ``corners`` (scenes, 4, 2) int64, each item's top and left.
    All scenes are composed at construction (2000 in about 0.15 s on one CPU core) and held as uint8.
    """

    num_classes: int = BACKGROUND + 1
    ignore_index: int = 255
    class_names: list[str] = [*CLASSES, "background"]

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        split: Literal["train", "test"] = "train",
        scenes: Annotated[int, Range(min=1)] = 2000,
        size: Annotated[int, Range(min=2 * ITEM, hint="four 28 px items side by side")] = 56,
        seed: int = 0,
    ):
        self.image_shape: tuple[int, int, int] = (1, size, size)
        folder = Path(root).expanduser()
        images_file, labels_file = (folder / name for name in FILES[split])
        missing = [p.name for p in (images_file, labels_file) if not p.is_file()]
        if missing:
            raise DataNotFoundError(
                f"{NAME}: {', '.join(missing)} not found in {folder}. Install the Debian package with "
                "`apt-get install dataset-fashion-mnist`, or set `root` to a folder holding the four idx "
                f".gz files ({', '.join(n for pair in FILES.values() for n in pair)})",
                expected_shape=self.image_shape,
            )
        sources, classes = read_split(images_file, labels_file)
        self.split = split
        self.class_names = list(self.class_names)
        generator = torch.Generator().manual_seed(seed)
        self.items = draw_items(len(classes), scenes, generator)
        split_items = SplitItems(sources[:, 0].numpy(), classes.numpy())
        self.corners = torch.empty(scenes, MAX_ITEMS, 2, dtype=torch.int64)
        self.images = torch.empty(scenes, 1, size, size, dtype=torch.uint8)
        self.labels = torch.empty(scenes, size, size, dtype=torch.uint8)  # int64 on access: 8x less memory
        for start in range(0, scenes, CHUNK):
            part = slice(start, start + CHUNK)
            corners, canvases, labels = compose_visible(split_items, self.items[part].numpy(), size, generator)
            self.corners[part], self.images[part, 0], self.labels[part] = (
                torch.from_numpy(corners), torch.from_numpy(canvases), torch.from_numpy(labels))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i].long()


def draw_items(available: int, scenes: int, generator: torch.Generator) -> Tensor:
    """(scenes, MAX_ITEMS) indices of the split's items, each scene 2 to 4 of them, -1 in the unused slots."""
    counts = torch.randint(MIN_ITEMS, MAX_ITEMS + 1, (scenes,), generator=generator)
    items = torch.randint(0, available, (scenes, MAX_ITEMS), generator=generator)
    return items.masked_fill(torch.arange(MAX_ITEMS) >= counts[:, None], -1)


class SplitItems:
    """A split's items as NumPy arrays (its small indexing and counting ops run several times faster there
    than in torch), with each item's foreground pixel count."""

    def __init__(self, pixels: np.ndarray, classes: np.ndarray):
        self.pixels = pixels  # (N, 28, 28) uint8, shared with every data set of the split: read only
        self.classes = classes  # (N,)
        self.foreground = np.count_nonzero(pixels.reshape(len(pixels), -1) >= FOREGROUND, axis=1)


def compose_visible(split: SplitItems, items: np.ndarray, size: int,
                    generator: torch.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corners, canvases and label maps of the scenes ``items`` (n, MAX_ITEMS): positions drawn, and redrawn
    for the scenes where an item keeps less than ``MIN_VISIBLE`` of its foreground, until none does."""
    n = len(items)
    corners = np.zeros((n, MAX_ITEMS, 2), dtype=np.int64)
    canvases = np.zeros((n, size, size), dtype=np.uint8)
    owners = np.full((n, size, size), -1, dtype=np.int8)
    pending = np.arange(n)
    while len(pending):
        shape = (len(pending), MAX_ITEMS, 2)
        corners[pending] = torch.randint(0, size - ITEM + 1, shape, generator=generator).numpy()
        canvases[pending], owners[pending] = compose(split.pixels, items[pending], corners[pending], size)
        pending = pending[~all_visible(split, items[pending], owners[pending])]
    # A pixel's label is the class of the item that owns it; unowned pixels are background.
    item_classes = split.classes[np.maximum(items, 0)]  # (n, MAX_ITEMS)
    shown = np.take_along_axis(item_classes, np.maximum(owners, 0).reshape(n, -1), axis=1).reshape(owners.shape)
    labels = np.where(owners >= 0, shown, BACKGROUND).astype(np.uint8)
    return corners, canvases, labels


def compose(pixels: np.ndarray, items: np.ndarray, corners: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw each scene's items in order onto black canvases: (n, size, size) uint8 canvases, and for each
    pixel the slot of the item it shows (int8, -1: none). A later item's foreground pixels replace what is
    under them; its background pixels leave the canvas as it was."""
    n = len(items)
    canvases = np.zeros(n * size * size, dtype=np.uint8)
    owners = np.full(n * size * size, -1, dtype=np.int8)
    window = (np.arange(ITEM)[:, None] * size + np.arange(ITEM)).ravel()  # a 28x28 window, flat
    for slot in range(MAX_ITEMS):
        scenes = np.flatnonzero(items[:, slot] >= 0)
        item_pixels = pixels[items[scenes, slot]].reshape(len(scenes), ITEM * ITEM)  # (m, 784); m may be 0
        foreground = item_pixels >= FOREGROUND
        # Flat indices of each item's window on its canvas: 1-D indexing is the fastest.
        top, left = corners[scenes, slot, 0], corners[scenes, slot, 1]
        where = ((scenes * size + top) * size + left)[:, None] + window
        canvases[where] = np.where(foreground, item_pixels, canvases[where])
        owners[where] = np.where(foreground, slot, owners[where])
    return canvases.reshape(n, size, size), owners.reshape(n, size, size)


def all_visible(split: SplitItems, items: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """(n,) bool: every item of the scene keeps at least ``MIN_VISIBLE`` of its foreground pixels."""
    flat = owners.reshape(len(owners), -1)
    shown = np.stack([np.count_nonzero(flat == slot, axis=1) for slot in range(MAX_ITEMS)], axis=1)
    return ((items < 0) | (shown >= MIN_VISIBLE * split.foreground[np.maximum(items, 0)])).all(axis=1)
