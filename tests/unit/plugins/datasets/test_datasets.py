"""The built-in data sets honour the dataset contract: ds[i] == (uint8 (C, H, W) tensor, int label)."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clrun import ComponentError, DataError, DataNotFoundError
from clrun.plugins.datasets import fashion_mnist
from clrun.plugins.datasets.cifar import CIFAR10, CIFAR100
from clrun.plugins.datasets.components import clrun_components
from clrun.plugins.datasets.fashion_mnist import DEFAULT_ROOT, FashionMNIST
from clrun.plugins.datasets.image_folder import ImageFolder
from clrun.plugins.datasets.synthetic import Synthetic

FMNIST = Path(DEFAULT_ROOT)
needs_fashion_mnist = pytest.mark.skipif(
    not (FMNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def assert_contract(ds, shape: tuple[int, int, int]) -> None:
    """Every item is (uint8 tensor of `shape`, int) and the data set describes itself."""
    assert ds.image_shape == shape
    for i in (0, len(ds) - 1):
        image, label = ds[i]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8
        assert tuple(image.shape) == shape
        assert type(label) is int
        assert label == -1 if not ds.classes else 0 <= label < len(ds.classes)


def test_components_offer_every_dataset():
    offered = {c.name: c for c in clrun_components()}
    assert set(offered) == {"clrun/fashion_mnist", "clrun/cifar10", "clrun/cifar100", "clrun/image_folder", "clrun/synthetic",
                            "clrun/webdataset", "clrun/hf_dataset", "clrun/fmnist_scenes", "clrun/segmentation_folder"}
    assert {c.kind for c in offered.values()} == {"dataset"}
    assert offered["clrun/cifar100"].factory is CIFAR100


# --- Fashion-MNIST -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist_test() -> FashionMNIST:
    return FashionMNIST(split="test")


@needs_fashion_mnist
def test_fashion_mnist_train_split():
    ds = FashionMNIST()
    assert len(ds) == 60000
    assert_contract(ds, (1, 28, 28))
    assert ds.images.shape == (60000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6000 training images per class.
    assert torch.bincount(ds.targets).tolist() == [6000] * 10


@needs_fashion_mnist
def test_fashion_mnist_test_split_matches_idx_file(fmnist_test):
    assert len(fmnist_test) == 10000
    assert_contract(fmnist_test, (1, 28, 28))
    assert len(fmnist_test.classes) == 10 and fmnist_test.classes[9] == "Ankle boot"
    # Read the first label and image independently of the reader under test.
    with gzip.open(FMNIST / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        magic, count = struct.unpack(">II", f.read(8))
        first_label = f.read(1)[0]
    with gzip.open(FMNIST / "t10k-images-idx3-ubyte.gz", "rb") as f:
        f.read(16)
        first_image = torch.tensor(list(f.read(28 * 28)), dtype=torch.uint8).reshape(1, 28, 28)
    assert (magic, count) == (2049, 10000)
    image, label = fmnist_test[0]
    assert label == first_label
    assert torch.equal(image, first_image)


@needs_fashion_mnist
def test_fashion_mnist_subset_is_fixed_by_seed(fmnist_test):
    a = FashionMNIST(split="test", subset=100, seed=1)
    b = FashionMNIST(split="test", subset=100, seed=1)
    c = FashionMNIST(split="test", subset=100, seed=2)
    assert len(a) == 100
    assert_contract(a, (1, 28, 28))
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)
    # The subset is made of real items of the split.
    assert any(torch.equal(a[0][0], fmnist_test[i][0]) for i in range(len(fmnist_test)))


@needs_fashion_mnist
@pytest.mark.parametrize("subset, message", [
    (0, "clrun/fashion_mnist: subset must be an integer >= 1 (null: the whole split), got 0"),
    (10001, "clrun/fashion_mnist: subset=10001 is out of range: the split has 10000 items (use 1..10000, or null "
            "for all)"),
])
def test_fashion_mnist_subset_out_of_range(subset, message):
    with pytest.raises(ComponentError) as info:
        FashionMNIST(split="test", subset=subset)
    assert (str(info.value), info.value.argument) == (message, "subset")


def test_fashion_mnist_missing_root(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as info:
        FashionMNIST(root=str(root), split="test")
    message = str(info.value)
    assert str(root) in message
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "`apt-get install dataset-fashion-mnist`" in message
    assert info.value.expected_shape == (1, 28, 28)


def test_fashion_mnist_bad_header_names_the_file(tmp_path):
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(images, "wb") as f:
        f.write(struct.pack(">IIII", 2049, 2, 28, 28) + bytes(2 * 28 * 28))  # the labels' magic number
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, 2) + bytes(2))
    with pytest.raises(DataError, match=re.escape(f"{images}: bad idx header")):
        FashionMNIST(root=str(tmp_path), split="test")


def test_fashion_mnist_truncated_file_names_the_file(tmp_path):
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 2, 28, 28) + bytes(2 * 28 * 28))
    with gzip.open(labels, "wb") as f:
        f.write(struct.pack(">II", 2049, 2) + bytes(1))  # one label short
    with pytest.raises(DataError, match=re.escape(f"{labels}: size 9 bytes (uncompressed) does not match its header (2,)")):
        FashionMNIST(root=str(tmp_path), split="test")


def test_fashion_mnist_small_folder_and_loader(tmp_path):
    """A hand-written two-image folder loads exactly, and batches through a DataLoader."""
    pixels = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 2, 28, 28) + pixels.tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, 2) + bytes([7, 3]))
    ds = FashionMNIST(root=str(tmp_path))
    assert [ds[0][1], ds[1][1]] == [7, 3]
    assert torch.equal(ds[1][0], torch.from_numpy(pixels[784:].reshape(1, 28, 28)))
    images, labels = next(iter(DataLoader(ds, batch_size=2)))
    assert images.shape == (2, 1, 28, 28) and labels.tolist() == [7, 3]


def write_fashion_mnist(folder: Path, labels: bytes) -> None:
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(labels), 28, 28) + bytes(range(len(labels))) * 28 * 28)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + labels)


def test_fashion_mnist_decodes_a_split_once_and_rereads_a_changed_file(tmp_path, monkeypatch):
    """A recipe names the training split several times (data, kNN bank, linear-probe bank): decoded once."""
    reads: list[str] = []
    read_idx = fashion_mnist.read_idx
    monkeypatch.setattr(fashion_mnist, "read_idx", lambda path, magic: reads.append(path.name) or read_idx(path, magic))
    write_fashion_mnist(tmp_path, bytes([1, 2, 3]))
    first, second = FashionMNIST(root=str(tmp_path)), FashionMNIST(root=str(tmp_path))
    assert reads == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert first.images is second.images and [second[i][1] for i in range(3)] == [1, 2, 3]
    subset = FashionMNIST(root=str(tmp_path), subset=2)
    assert len(reads) == 2 and len(subset) == 2 and subset.images is not first.images  # a subset is a copy
    write_fashion_mnist(tmp_path, bytes([4, 5]))  # replaced: another size, so read again
    assert [FashionMNIST(root=str(tmp_path))[i][1] for i in range(2)] == [4, 5] and len(reads) == 4


# --- CIFAR ---------------------------------------------------------------------------------------


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def fake_cifar10(root: Path, per_batch: int = 4) -> None:
    """torchvision's cifar-10-batches-py layout, with a few images per batch.

    Image j of batch b has every red pixel = 10*b + j, green = 100, blue = 200, and label (b + j) % 10.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for b, name in enumerate(names):
        data = np.empty((per_batch, 3072), dtype=np.uint8)
        for j in range(per_batch):
            data[j, :1024], data[j, 1024:2048], data[j, 2048:] = 10 * b + j, 100, 200
        write_pickle(folder / name, {"batch_label": name, "data": data, "labels": [(b + j) % 10 for j in range(per_batch)]})
    write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch})


def test_cifar10_reads_torchvision_format(tmp_path):
    fake_cifar10(tmp_path)
    ds = CIFAR10(root=str(tmp_path))
    assert len(ds) == 20
    assert_contract(ds, (3, 32, 32))
    assert ds.classes == [f"c{i}" for i in range(10)]
    image, label = ds[5]  # batch 1 (data_batch_2), image 1
    assert label == 2
    # The planes land in channel order: red, green, blue.
    assert image[0].unique().tolist() == [11] and image[1].unique().tolist() == [100] and image[2].unique().tolist() == [200]

    test = CIFAR10(root=str(tmp_path), split="test")
    assert len(test) == 4 and test[0][0][0, 0, 0] == 50 and test[0][1] == 5

    sub = CIFAR10(root=str(tmp_path), subset=7, seed=3)
    again = CIFAR10(root=str(tmp_path), subset=7, seed=3)
    assert len(sub) == 7 and torch.equal(sub.images, again.images)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.zeros((3, 3072), dtype=np.uint8)
    write_pickle(folder / "train", {"data": data, "fine_labels": [42, 99, 0], "coarse_labels": [1, 2, 3]})
    write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []})
    ds = CIFAR100(root=str(tmp_path))
    assert [ds[i][1] for i in range(3)] == [42, 99, 0]
    assert len(ds.classes) == 100
    assert_contract(ds, (3, 32, 32))


def test_cifar10_missing_folder(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        CIFAR10(root=str(tmp_path))
    message = str(info.value)
    assert f"expected torchvision's format in {tmp_path / 'cifar-10-batches-py'}" in message
    assert "cl-run never downloads data" in message
    assert f"torchvision.datasets.CIFAR10('{tmp_path}', download=True)" in message
    assert info.value.expected_shape == (3, 32, 32)


def test_cifar100_missing_folder_names_cifar100(tmp_path):
    with pytest.raises(DataNotFoundError, match=re.escape("clrun/cifar100: CIFAR-100 not found")):
        CIFAR100(root=str(tmp_path), split="test")


def test_cifar_corrupt_batch_names_the_file(tmp_path):
    fake_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=re.escape(f"{bad}: not a readable CIFAR batch")):
        CIFAR10(root=str(tmp_path), split="test")


# --- image folder --------------------------------------------------------------------------------


def stripes(width: int, height: int) -> Image.Image:
    """Left third red, middle third green, right third blue: a center crop keeps only green."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    array[:, :third, 0] = 255
    array[:, third : 2 * third, 1] = 255
    array[:, 2 * third :, 2] = 255
    return Image.fromarray(array)


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """cat/ with a PNG and a nested .JPG, dog/ with a PNG; all 120x30 (non-square) images."""
    for path in (tmp_path / "cat" / "a.png", tmp_path / "cat" / "deep" / "b.JPG", tmp_path / "dog" / "c.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        stripes(120, 30).save(path, format="JPEG" if path.suffix.lower() == ".jpg" else "PNG")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "._c.png").write_bytes(b"macOS resource fork")  # hidden: skipped
    return tmp_path


def test_image_folder_labels_from_subfolders(class_folders):
    ds = ImageFolder(root=str(class_folders), size=16)
    assert ds.label_mode == "subfolders"
    assert ds.classes == ["cat", "dog"]
    assert [p.relative_to(class_folders).as_posix() for p in ds.files] == ["cat/a.png", "cat/deep/b.JPG", "dog/c.png"]
    assert [ds[i][1] for i in range(3)] == [0, 0, 1]
    assert_contract(ds, (3, 16, 16))
    image, _ = ds[0]
    # The 120x30 image became 64x16 and its central 16 columns (source columns 45..75, all green) were kept.
    assert image[1].min() >= 250 and image[0].max() <= 5 and image[2].max() <= 5


def test_image_folder_grayscale_and_unlabeled(class_folders):
    ds = ImageFolder(root=str(class_folders), size=8, labels="none", channels=1)
    assert ds.classes == [] and ds.label_mode == "none"
    assert [ds[i][1] for i in range(len(ds))] == [-1, -1, -1]
    assert_contract(ds, (1, 8, 8))
    images, labels = next(iter(DataLoader(ds, batch_size=3)))
    assert images.shape == (3, 1, 8, 8) and labels.tolist() == [-1, -1, -1]


def test_image_folder_auto_is_unlabeled_with_loose_images_or_one_folder(tmp_path):
    (tmp_path / "only").mkdir()
    stripes(30, 30).save(tmp_path / "only" / "a.png")
    assert ImageFolder(root=str(tmp_path), size=8).classes == []  # one subfolder: no classes to learn
    stripes(30, 30).save(tmp_path / "loose.png")
    assert ImageFolder(root=str(tmp_path), size=8).label_mode == "none"
    with pytest.raises(DataError, match=r"labels='subfolders' but 1 image\(s\) sit directly in .*loose\.png"):
        ImageFolder(root=str(tmp_path), labels="subfolders")


def test_image_folder_corrupt_file_names_it(class_folders):
    bad = class_folders / "dog" / "x.jpg"
    bad.write_bytes(b"\x00garbage, not a jpeg" * 10)
    ds = ImageFolder(root=str(class_folders), size=16)
    index = ds.files.index(bad)
    with pytest.raises(DataError, match=rf"cannot read image {re.escape(str(bad))} .*remove or replace it") as info:
        ds[index]
    assert info.value.__cause__ is not None  # PIL's own error is kept for the traceback


def test_image_folder_empty_folder_names_path_and_patterns(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(DataNotFoundError, match=re.escape(f"no images in {tmp_path} (searched **/*.jpg, **/*.jpeg, **/*.png")):
        ImageFolder(root=str(tmp_path))


def test_image_folder_without_root():
    with pytest.raises(DataNotFoundError, match=re.escape("no data root given: set data.dataset.root")) as info:
        ImageFolder(size=64, channels=1)
    assert info.value.expected_shape == (1, 64, 64)


def test_image_folder_missing_root(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(DataNotFoundError, match=re.escape(f"data root {missing} does not exist")):
        ImageFolder(root=str(missing))


def test_image_folder_pickles_for_worker_processes(class_folders):
    ds = pickle.loads(pickle.dumps(ImageFolder(root=str(class_folders), size=16)))
    assert ds[2][1] == 1


# --- synthetic -----------------------------------------------------------------------------------


def test_synthetic_shape_and_determinism():
    ds = Synthetic(num_images=64, num_classes=4, size=24, channels=3, seed=5)
    assert len(ds) == 64
    assert_contract(ds, (3, 24, 24))
    assert ds.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert torch.bincount(ds.targets).tolist() == [16, 16, 16, 16]
    same = Synthetic(num_images=64, num_classes=4, size=24, channels=3, seed=5)
    assert torch.equal(ds.images, same.images) and torch.equal(ds.targets, same.targets)
    assert not torch.equal(ds.images, Synthetic(num_images=64, num_classes=4, size=24, channels=3, seed=6).images)


def test_synthetic_classes_are_distinguishable():
    """Nearest class mean on the Fourier magnitude (shift-invariant) separates the classes."""
    ds = Synthetic(num_images=400, num_classes=10, size=32, channels=1, seed=0)
    x = ds.images.float().mean(1)
    features = torch.fft.fft2(x - x.mean((1, 2), keepdim=True)).abs().flatten(1)
    features = features / features.norm(dim=1, keepdim=True)
    train, held_out = slice(0, 300), slice(300, None)
    means = torch.stack([features[train][ds.targets[train] == k].mean(0) for k in range(10)])
    accuracy = ((features[held_out] @ means.T).argmax(1) == ds.targets[held_out]).float().mean()
    assert accuracy > 0.9
