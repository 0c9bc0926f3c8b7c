"""Every registered built-in data set (``clrun/*``) against the data set contracts of ``clrun.testing``.

A data set that reads files gets tiny real ones, written here into ``tmp_path`` in the format it
reads (Fashion-MNIST's idx .gz files, CIFAR's pickled batches, an image folder of PNGs), so every
contract runs on every machine: none is skipped for missing data. A new built-in data set that
cannot be built from its defaults fails until a maker is added to MAKERS. What each contract
checks is in ``core/testing/datasets.py``.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import clrun
from clrun import testing


def fashion_mnist_files(root: Path) -> dict:
    """The four idx .gz files (both splits) with 5 random 28x28 images each."""
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=5, dtype=np.uint8)
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, 5, 28, 28) + images.tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, 5) + labels.tobytes())
    return {"root": str(root)}


def _cifar_files(folder: Path, batches: list[str], meta: str, label_key: str, names_key: str, classes: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in batches:
        data = rng.integers(0, 256, size=(3, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, label_key: [int(x) for x in rng.integers(0, classes, size=3)]}, f)
    with open(folder / meta, "wb") as f:
        pickle.dump({names_key: [f"class_{i}" for i in range(classes)]}, f)


def cifar10_files(root: Path) -> dict:
    """torchvision's cifar-10-batches-py layout, 3 random images per batch file."""
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _cifar_files(root / "cifar-10-batches-py", batches, "batches.meta", "labels", "label_names", 10)
    return {"root": str(root)}


def cifar100_files(root: Path) -> dict:
    """torchvision's cifar-100-python layout, 3 random images per file."""
    _cifar_files(root / "cifar-100-python", ["train", "test"], "meta", "fine_labels", "fine_label_names", 100)
    return {"root": str(root)}


def image_folder_files(root: Path) -> dict:
    """Two class folders of PNGs of different sizes and modes (RGB, gray, RGBA): resized to one size."""
    rng = np.random.default_rng(0)
    for i, (cls, size, mode) in enumerate([("cat", (20, 30), "RGB"), ("cat", (40, 24), "L"), ("dog", (17, 17), "RGBA")]):
        (root / cls).mkdir(parents=True, exist_ok=True)
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(root / cls / f"{i}.png")
    return {"root": str(root), "size": 16}


def webdataset_files(root: Path) -> dict:
    """The image folder's images written by `cl-run shards`, one shard each."""
    from clrun.commands.shards import write_shards

    write_shards(image_folder_files(root / "images")["root"], root / "shards", shard_size=1)
    return {"urls": str(root / "shards"), "size": 16}


def parquet_files(root: Path) -> dict:
    """The image folder's images as a Parquet file with an Image column."""
    import datasets

    files = sorted(Path(image_folder_files(root / "images")["root"]).rglob("*.png"))
    table = datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": [0, 0, 1]})
    table.cast_column("image", datasets.Image()).to_parquet(str(root / "images.parquet"))
    return {"path": str(root / "images.parquet"), "size": 16}


def segmentation_folder_files(root: Path) -> dict:
    """A plain-layout segmentation folder: two images and their label maps (classes 0..2, 255 ignored)."""
    rng = np.random.default_rng(0)
    for folder in ("images/train", "labels/train"):
        (root / folder).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)).save(root / "images" / "train" / f"{i}.png")
        labels = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), size=(12, 10))
        Image.fromarray(labels).save(root / "labels" / "train" / f"{i}.png")
    return {"root": str(root), "num_classes": 3, "size": 8}


# What each file-reading data set is built from; the others are built from their defaults.
MAKERS: dict[str, Callable[[Path], dict]] = {
    "clrun/fashion_mnist": fashion_mnist_files,  # its default root may hold the real files: these are 5 images
    "clrun/cifar10": cifar10_files,
    "clrun/cifar100": cifar100_files,
    "clrun/image_folder": image_folder_files,
    "clrun/webdataset": webdataset_files,
    "clrun/hf_dataset": parquet_files,
    "clrun/synthetic": lambda root: {"num_images": 12, "size": 16},  # smaller than the default 512 images
    "clrun/fmnist_scenes": lambda root: {**fashion_mnist_files(root), "scenes": 4},
    "clrun/segmentation_folder": segmentation_folder_files,
}

CASES = testing.cases("clrun/*", kind="dataset")


def test_every_builtin_dataset_has_its_contracts():
    names = {c.name for c in clrun.components("dataset", "clrun/*")}
    assert {"clrun/fashion_mnist", "clrun/cifar10", "clrun/cifar100", "clrun/image_folder", "clrun/synthetic"} <= names
    covered = {(c.name, c.contract) for c in CASES}
    assert {(name, contract) for name in names for contract in ("items", "deterministic_items")} <= covered
    # the data sets that read files from a `root` are also checked with a missing root
    assert {name for name, contract in covered if contract == "missing_root"} == names - {
        "clrun/synthetic", "clrun/webdataset", "clrun/hf_dataset"}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dataset_contract(case, tmp_path):
    settings = MAKERS[case.name](tmp_path) if case.name in MAKERS else {}
    case.check(**settings)
