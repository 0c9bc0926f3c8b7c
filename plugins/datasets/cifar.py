"""CIFAR-10 and CIFAR-100 read from torchvision's on-disk format (never downloaded).

torchvision.datasets.CIFAR10/100 verify the md5 of every batch file before loading, so they refuse any
copy that is not byte-identical to the official archive (and a test cannot build a small stand-in).
We therefore read the same files ourselves: the pickled batches named below, inside the same folders
torchvision uses, so a folder torchvision downloaded works here unchanged. Only these known file names
are unpickled; pickle is the format the CIFAR authors publish.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from clrun import DataError, DataNotFoundError, checked
from clrun.plugins.datasets.fashion_mnist import Subset, pick_subset


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and which keys hold labels and class names."""

    component: str  # the component name, for messages
    title: str  # the data set's usual name, for messages
    folder: str  # subfolder of root, as torchvision names it
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    torchvision_class: str  # for the download hint


CIFAR10_LAYOUT = CifarLayout(
    component="clrun/cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    torchvision_class="CIFAR10",
)

CIFAR100_LAYOUT = CifarLayout(
    component="clrun/cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    # CIFAR-100 has 100 fine and 20 coarse classes; the fine ones are the usual benchmark.
    label_key="fine_labels",
    names_key="fine_label_names",
    torchvision_class="CIFAR100",
)

IMAGE_SHAPE: tuple[int, int, int] = (3, 32, 32)


def _unpickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle, with str keys whether it was written by Python 2 or re-pickled as bytes."""
    try:
        with open(path, "rb") as f:
            # The official files are Python 2 pickles; latin1 maps their byte strings 1:1 (as torchvision does).
            entry = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise DataError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e}); replace it with an intact copy") from e
    if not isinstance(entry, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(entry).__name__}; replace it with an intact copy")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _field(entry: dict[str, Any], key: str, path: Path) -> Any:
    if key not in entry:
        raise DataError(f"{path}: no {key!r} entry (found {', '.join(map(str, entry)) or 'none'}); is this the right file?")
    return entry[key]


@checked
class _Cifar(Dataset):
    """Shared reader of both CIFAR variants; the subclasses only choose a ``layout``."""

    layout: CifarLayout
    image_shape: tuple[int, int, int] = IMAGE_SHAPE

    def __init__(self, root: str, split: Literal["train", "test"] = "train", subset: Subset = None, seed: int = 0):
        layout = self.layout
        folder = Path(root).expanduser() / layout.folder
        files = layout.train_files if split == "train" else layout.test_files
        missing = [name for name in (*files, layout.meta_file) if not (folder / name).is_file()]
        if missing:
            raise DataNotFoundError(self._not_found_message(root, folder, missing), expected_shape=IMAGE_SHAPE)

        meta_path = folder / layout.meta_file
        classes = [str(c) for c in _field(_unpickle(meta_path), layout.names_key, meta_path)]
        chunks: list[np.ndarray] = []
        labels: list[int] = []
        for name in files:
            path = folder / name
            entry = _unpickle(path)
            data = np.asarray(_field(entry, "data", path))
            batch_labels = list(_field(entry, layout.label_key, path))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
            if len(batch_labels) != len(data):
                raise DataError(f"{path}: {len(data)} images but {len(batch_labels)} labels")
            chunks.append(data)
            labels.extend(int(x) for x in batch_labels)
        if labels and not 0 <= min(labels) <= max(labels) < len(classes):
            raise DataError(f"{folder}: labels span {min(labels)}..{max(labels)} but {meta_path} names {len(classes)} classes")

        # Each row is the red plane, then green, then blue, each 32x32 row-major: that is already (C, H, W),
        # so one reshape (no transpose, unlike torchvision's HWC .data) gives the tensor we serve.
        self.images: torch.Tensor = torch.from_numpy(np.concatenate(chunks).reshape(-1, *IMAGE_SHAPE))
        self.targets: torch.Tensor = torch.tensor(labels, dtype=torch.int64)
        index = pick_subset(len(self.targets), subset, seed, layout.component)
        if index is not None:
            self.images, self.targets = self.images[index], self.targets[index]
        self.classes: list[str] = classes
        self.split = split

    def _not_found_message(self, root: str, folder: Path, missing: list[str]) -> str:
        layout = self.layout
        hint = ""
        if Path(root).expanduser().name == layout.folder:
            hint = f" (`root` seems to name {layout.folder} itself: set it to the folder above)"
        return (
            f"{layout.component}: {layout.title} not found: expected torchvision's format in {folder}, "
            f"missing {', '.join(missing)}{hint}. cl-run never downloads data: on a machine with internet run "
            f"`python -c \"import torchvision; torchvision.datasets.{layout.torchvision_class}('{root}', download=True)\"` "
            f"and copy {layout.folder} here, or set `root` to the folder that holds {layout.folder}"
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


class CIFAR10(_Cifar):
    """CIFAR-10: 32x32 colour images in 10 classes (50,000 train, 10,000 test).

    root:   folder holding ``cifar-10-batches-py`` (as torchvision downloads it).
    split:  "train" or "test".
    subset: use only this many items, a fixed random draw made with ``seed``.
    seed:   seed of the subset draw.
    """

    layout = CIFAR10_LAYOUT  # the signature (the recipe schema) is _Cifar.__init__'s


class CIFAR100(_Cifar):
    """CIFAR-100: 32x32 colour images in 100 fine classes (50,000 train, 10,000 test).

    root:   folder holding ``cifar-100-python`` (as torchvision downloads it).
    split:  "train" or "test".
    subset: use only this many items, a fixed random draw made with ``seed``.
    seed:   seed of the subset draw.
    """

    layout = CIFAR100_LAYOUT
