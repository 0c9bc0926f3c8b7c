"""Fashion-MNIST read from its four idx .gz files (no download, no torchvision)."""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from clrun import ComponentError, DataError, DataNotFoundError, Range, checked

# Where the Debian package `dataset-fashion-mnist` installs the files.
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

# idx magic numbers: two zero bytes, type code 0x08 (unsigned byte), then the number of dimensions.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801

Subset = Optional[Annotated[int, Range(min=1, hint="null: the whole split")]]
"""The ``subset`` argument of the in-memory data sets; its upper bound, the split's size, is checked by
``pick_subset`` once the split is read."""


def pick_subset(n: int, subset: int | None, seed: int, source: str) -> torch.Tensor | None:
    """Indices of a fixed random subset of ``subset`` out of ``n`` items, or None for all of them.

    Shared by the in-memory data sets (Fashion-MNIST, CIFAR). The draw depends only on ``(n, subset, seed)``,
    so a recipe names the same items on every machine; the indices are sorted to keep the file order.
    """
    if subset is None:
        return None
    if subset > n:
        raise ComponentError(f"{source}: subset={subset} is out of range: the split has {n} items (use 1..{n}, or null "
                             f"for all)", argument="subset")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:subset].sort().values


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzipped idx file into a uint8 array shaped as its header says.

    Raises DataError naming the file when it is not gzip, has another magic number, or its size does not
    match the header (a truncated download is the usual cause).
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: not a readable gzip file ({e}); replace it with an intact copy") from e
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size or struct.unpack(">I", raw[:4])[0] != magic:
        found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
        raise DataError(
            f"{path}: bad idx header (magic {found!r}, expected {magic:#010x}); "
            "is this the right file? Replace it with an intact copy"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = header_size + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: size {len(raw)} bytes (uncompressed) does not match its header {shape} "
            f"({expected} bytes); the file is truncated or corrupt, replace it"
        )
    # frombuffer views the bytes read-only; reshaping keeps that, and torch copies below when needed.
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def read_split(images_file: Path, labels_file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images (N, 1, 28, 28) uint8 and labels (N,) int64, decoded once per process and file version.

    A recipe often names the same split several times (the training data, then the kNN and linear-probe
    evaluators' banks): decompressing the 26 MB training file takes about 0.4 s each time. The tensors
    are shared by every data set of that split, so they must not be modified in place; a subset is a copy.
    """
    versions = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in (images_file, labels_file))
    return _decoded_split(*versions)


@functools.lru_cache(maxsize=2)  # the train and test splits of one folder
def _decoded_split(images_version: tuple[str, int, int], labels_version: tuple[str, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    images_file, labels_file = Path(images_version[0]), Path(labels_version[0])
    images = read_idx(images_file, _IMAGES_MAGIC)
    labels = read_idx(labels_file, _LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_file}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASSES):
        raise DataError(f"{labels_file}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
    # torch.tensor copies out of the read-only gzip buffer (from_numpy would warn and alias it).
    return torch.tensor(images).unsqueeze(1), torch.tensor(labels, dtype=torch.int64)


@checked
class FashionMNIST(Dataset):
    """Fashion-MNIST: 28x28 grayscale clothing images in 10 classes (60,000 train, 10,000 test).

    root:   folder holding the four idx .gz files (the Debian package `dataset-fashion-mnist` installs
            them in the default folder).
    split:  "train" or "test".
    subset: use only this many items, a fixed random draw made with ``seed`` (e.g. for a quick run).
    seed:   seed of the subset draw.

    The whole split is held in memory as one uint8 tensor (47 MB for train), so items need no decoding;
    data sets of the same split share it (see ``read_split``).
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        split: Literal["train", "test"] = "train",
        subset: Subset = None,
        seed: int = 0,
    ):
        folder = Path(root).expanduser()
        images_file, labels_file = (folder / name for name in FILES[split])
        missing = [p.name for p in (images_file, labels_file) if not p.is_file()]
        if missing:
            raise DataNotFoundError(
                f"clrun/fashion_mnist: {', '.join(missing)} not found in {folder}. Install the Debian package "
                "with `apt-get install dataset-fashion-mnist`, or set `root` to a folder holding the four idx "
                f".gz files ({', '.join(n for pair in FILES.values() for n in pair)})",
                expected_shape=self.image_shape,
            )

        self.images, self.targets = read_split(images_file, labels_file)
        index = pick_subset(len(self.targets), subset, seed, "clrun/fashion_mnist")
        if index is not None:
            self.images, self.targets = self.images[index], self.targets[index]
        self.classes: list[str] = list(CLASSES)
        self.split = split

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])
