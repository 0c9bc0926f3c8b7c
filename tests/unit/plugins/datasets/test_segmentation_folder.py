"""clrun/segmentation_folder: tiny folders of each layout written here with PIL, whose every label is known.

Label maps are small (8x8, 12x12) and the sizes asked for are the source size or exact nearest resamplings
(halving takes each 2x2 block's bottom-right pixel, the one under the output pixel's center; doubling
repeats each pixel), so each test states every pixel's expected label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import clrun
from clrun import ComponentError, DataError, DataNotFoundError
from clrun.plugins.datasets.fashion_mnist import pick_subset
from clrun.plugins.datasets.segmentation_folder import SegmentationFolder

NAME = "clrun/segmentation_folder"


def voc_palette() -> list[int]:
    """Pascal VOC's color map (bit-interleaved class index), 256 RGB entries."""
    palette = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def photo(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random RGB image written to ``path`` (JPEG or PNG by its name); returns the pixels as decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return np.array(Image.open(path).convert("RGB"))


def label_map(path: Path, values: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), "L")
    if mode == "P":
        image = image.convert("P")  # keeps the values as indices
        image.putpalette(voc_palette())
    image.save(path)


def grid(height: int, width: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, (height, width))


# --- plain -------------------------------------------------------------------------------------------


@pytest.fixture
def plain(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """images/train/a.png (8x8) with labels/train/a.png: classes 0..3, a void (255) column."""
    values = grid(8, 8, 4)
    values[:, 5] = 255
    pixels = photo(tmp_path / "images/train/a.png", 8, 8)
    label_map(tmp_path / "labels/train/a.png", values)
    return tmp_path, values, pixels


def test_plain_at_source_size_serves_the_file(plain):
    root, values, pixels = plain
    data = SegmentationFolder(root=str(root), num_classes=4, size=8)
    image, labels = data[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
    assert labels.dtype == torch.int64 and torch.equal(labels, torch.from_numpy(values))  # 255 stays 255
    assert (len(data), data.num_classes, data.ignore_index) == (1, 4, 255)
    assert data.class_names == ["class_0", "class_1", "class_2", "class_3"]


def test_plain_resizing_is_nearest_for_labels_and_bilinear_for_images(plain):
    root, values, _ = plain
    half = SegmentationFolder(root=str(root), num_classes=4, size=4)[0]
    assert torch.equal(half[1], torch.from_numpy(values[1::2, 1::2]))
    double = SegmentationFolder(root=str(root), num_classes=4, size=16)[0]
    assert torch.equal(double[1], torch.from_numpy(values.repeat(2, 0).repeat(2, 1)))
    expected = Image.open(root / "images/train/a.png").convert("RGB").resize((4, 4), Image.Resampling.BILINEAR)
    assert torch.equal(half[0], torch.from_numpy(np.array(expected)).permute(2, 0, 1))


def test_plain_serves_void_as_the_ignore_index_asked_for(plain):
    root, values, _ = plain
    labels = SegmentationFolder(root=str(root), num_classes=4, size=8, ignore_index=-1)[0][1]
    assert torch.equal(labels, torch.from_numpy(np.where(values == 255, -1, values)))


def test_class_names_give_the_class_count(plain):
    data = SegmentationFolder(root=str(plain[0]), class_names=["sky", "road", "car", "tree"], size=8)
    assert data.num_classes == 4 and data.class_names == ["sky", "road", "car", "tree"]


def test_images_of_other_sizes_batch(tmp_path):
    for i, (h, w) in enumerate([(8, 12), (12, 8), (10, 10)]):
        photo(tmp_path / f"images/val/{i}.jpg", h, w, seed=i)
        label_map(tmp_path / f"labels/val/{i}.png", grid(h, w, 3, seed=i))
    images, labels = next(iter(DataLoader(SegmentationFolder(root=str(tmp_path), split="val", num_classes=3, size=6),
                                          batch_size=3)))
    assert images.shape == (3, 3, 6, 6) and labels.shape == (3, 6, 6) and labels.dtype == torch.int64


def test_subset_is_a_fixed_draw(tmp_path):
    for i in range(6):
        photo(tmp_path / f"images/train/{i}.png", 8, 8, seed=i)
        label_map(tmp_path / f"labels/train/{i}.png", grid(8, 8, 2, seed=i))
    data = SegmentationFolder(root=str(tmp_path), num_classes=2, size=8, subset=3, seed=5)
    chosen = pick_subset(6, 3, 5, NAME).tolist()
    assert [p.name for p, _ in data.pairs] == [f"{i}.png" for i in chosen]
    assert [p.name for p, _ in SegmentationFolder(root=str(tmp_path), num_classes=2, size=8, subset=3, seed=5).pairs] \
        == [p.name for p, _ in data.pairs]


# --- ADE20K ------------------------------------------------------------------------------------------


def test_ade20k_shifts_classes_down_and_ignores_zero(tmp_path):
    values = grid(12, 12, 151)  # 0 ("other") and classes 1..150
    values[0, :4] = [0, 1, 150, 0]
    photo(tmp_path / "images/validation/ADE_val_00000001.jpg", 12, 12)
    label_map(tmp_path / "annotations/validation/ADE_val_00000001.png", values)
    data = SegmentationFolder(root=str(tmp_path), layout="ade20k", split="val", size=12)
    labels = data[0][1]
    assert labels[0, :4].tolist() == [255, 0, 149, 255]
    assert torch.equal(labels, torch.from_numpy(np.where(values == 0, 255, values - 1)))
    assert data.num_classes == 150 and len(data.class_names) == 150
    assert len(SegmentationFolder(root=str(tmp_path), layout="ade20k", split="validation", size=12)) == 1


def test_ade20k_value_past_the_classes_names_file_value_and_fix(tmp_path):
    photo(tmp_path / "images/training/a.jpg", 8, 8)
    label_map(tmp_path / "annotations/training/a.png", np.full((8, 8), 151))
    data = SegmentationFolder(root=str(tmp_path), layout="ade20k", size=8)
    with pytest.raises(DataError) as caught:
        data[0]
    assert str(caught.value) == (
        f"{NAME}: {tmp_path}/annotations/training/a.png has label value 151 (class 150 in the ade20k layout, where "
        f"value v is class v - 1), which is not a class (0..149) nor the void value 0; set num_classes to the data "
        f"set's number of classes, or fix the file")


# --- Pascal VOC --------------------------------------------------------------------------------------


def voc(root: Path, names: dict[str, np.ndarray], split: dict[str, list[str]]) -> None:
    for name, values in names.items():
        photo(root / f"JPEGImages/{name}.jpg", *values.shape)
        label_map(root / f"SegmentationClass/{name}.png", values, mode="P")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    for split_name, listed in split.items():
        (root / f"ImageSets/Segmentation/{split_name}.txt").write_text("".join(n + "\n" for n in listed))


def test_voc_reads_palette_indices_in_split_order(tmp_path):
    first, second = grid(8, 8, 21, seed=1), grid(8, 8, 21, seed=2)
    first[0] = 255  # the void border
    voc(tmp_path, {"2007_000032": first, "2007_000033": second, "2007_000039": grid(8, 8, 21)},
        {"val": ["2007_000033", "2007_000032"]})
    assert Image.open(tmp_path / "SegmentationClass/2007_000032.png").mode == "P"
    data = SegmentationFolder(root=str(tmp_path), layout="voc", split="val", size=8)
    assert [p.stem for p, _ in data.pairs] == ["2007_000033", "2007_000032"]
    assert torch.equal(data[0][1], torch.from_numpy(second))
    assert torch.equal(data[1][1], torch.from_numpy(first))  # indices, not colors; 255 ignored
    assert data.num_classes == 21


def test_voc_image_without_label_names_both(tmp_path):
    voc(tmp_path, {"a": grid(8, 8, 21)}, {"train": ["a", "b"]})
    photo(tmp_path / "JPEGImages/b.jpg", 8, 8)
    with pytest.raises(DataError) as caught:
        SegmentationFolder(root=str(tmp_path), layout="voc", size=8)
    assert str(caught.value) == (
        f"{NAME}: image {tmp_path}/JPEGImages/b.jpg has no label map {tmp_path}/SegmentationClass/b.png; add the "
        f"label maps, or remove the images that have none from {tmp_path}/ImageSets/Segmentation/train.txt")


def test_voc_missing_split_list_and_listed_image(tmp_path):
    voc(tmp_path, {"a": grid(8, 8, 21)}, {"train": ["a", "gone"]})
    with pytest.raises(DataNotFoundError, match=r"split list .*/ImageSets/Segmentation/val.txt not found: the voc "
                                                r"layout expects .*; set split to a list there \(train, val, trainval\)"):
        SegmentationFolder(root=str(tmp_path), layout="voc", split="val")
    with pytest.raises(DataError, match=r"train.txt names gone, but .*/JPEGImages/gone.jpg does not exist"):
        SegmentationFolder(root=str(tmp_path), layout="voc")


# --- Cityscapes --------------------------------------------------------------------------------------


def test_cityscapes_reads_train_ids(tmp_path):
    values = grid(8, 16, 19)
    values[7] = 255
    stem = "frankfurt_000000_000294"
    photo(tmp_path / f"leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png", 8, 16)
    label_map(tmp_path / f"gtFine/val/frankfurt/{stem}_gtFine_labelTrainIds.png", values)
    label_map(tmp_path / f"gtFine/val/frankfurt/{stem}_gtFine_labelIds.png", np.full((8, 16), 33))  # not read
    data = SegmentationFolder(root=str(tmp_path), layout="cityscapes", split="val", size=8)
    assert data.num_classes == 19
    assert torch.equal(data[0][1], torch.from_numpy(values[:, 1::2]))  # width halved: odd columns


def test_cityscapes_without_train_ids_says_how_to_make_them(tmp_path):
    photo(tmp_path / "leftImg8bit/train/ulm/ulm_000000_000019_leftImg8bit.png", 8, 8)
    label_map(tmp_path / "gtFine/train/ulm/ulm_000000_000019_gtFine_labelIds.png", grid(8, 8, 34))
    with pytest.raises(DataError) as caught:
        SegmentationFolder(root=str(tmp_path), layout="cityscapes", size=8)
    assert str(caught.value).startswith(f"{NAME}: image {tmp_path}/leftImg8bit/train/ulm/ulm_000000_000019_leftImg8bit.png "
                                        f"has no label map {tmp_path}/gtFine/train/ulm/ulm_000000_000019_gtFine_labelTrainIds.png")
    assert str(caught.value).endswith(f"make them with cityscapesScripts (`CITYSCAPES_DATASET={tmp_path} "
                                      f"csCreateTrainIdLabelImgs`)")


# --- Errors ------------------------------------------------------------------------------------------


def test_missing_folder_names_the_layouts_expected_path(tmp_path):
    with pytest.raises(DataNotFoundError) as caught:
        clrun.create("dataset", NAME, root=str(tmp_path), layout="ade20k", size=32)
    assert str(caught.value) == (
        f"{NAME}: {tmp_path}/images/training not found: the ade20k layout expects images/training/*.jpg and "
        f"annotations/training/*.png (root is ADEChallengeData2016) under root {tmp_path}; set root (and split) to "
        f"such a folder")
    assert caught.value.expected_shape == (3, 32, 32)  # `cl-run check` goes on with random images
    with pytest.raises(DataNotFoundError, match=r"no data root given: set root to the folder holding "
                                                r"leftImg8bit/train/CITY/\*_leftImg8bit.png"):
        SegmentationFolder(layout="cityscapes")


def test_image_without_label_names_both(plain):
    root = plain[0]
    photo(root / "images/train/b.jpg", 8, 8)
    photo(root / "images/train/c.jpg", 8, 8)
    with pytest.raises(DataError) as caught:
        SegmentationFolder(root=str(root), num_classes=4)
    assert str(caught.value) == (f"{NAME}: image {root}/images/train/b.jpg has no label map {root}/labels/train/b.png "
                                 f"(nor have 1 more images); add the label maps, or remove the images that have none")


def test_value_past_the_classes_names_file_value_and_fix(plain):
    root = plain[0]
    with pytest.raises(DataError) as caught:
        SegmentationFolder(root=str(root), num_classes=3, size=8)[0]
    assert str(caught.value) == (
        f"{NAME}: {root}/labels/train/a.png has label value 3, which is not a class (0..2) nor the void value 255; "
        f"set num_classes to the data set's number of classes, or fix the file")


def test_label_value_hidden_by_resizing_is_still_found(plain):
    root, values, _ = plain
    values[0, 0] = 9  # halving never samples pixel (0, 0)
    label_map(root / "labels/train/a.png", values)
    with pytest.raises(DataError, match="has label value 9"):
        SegmentationFolder(root=str(root), num_classes=4, size=4)[0]


def test_color_label_map_and_size_mismatch(plain):
    root = plain[0]
    photo(root / "labels/train/a.png", 8, 8)  # an RGB image where indices belong
    with pytest.raises(DataError, match=r"label map .*/labels/train/a.png is a RGB image, not one of class indices; "
                                        r"save label maps as 8-bit gray \(L\) or palette \(P\) PNGs"):
        SegmentationFolder(root=str(root), num_classes=4)[0]
    label_map(root / "labels/train/a.png", grid(6, 8, 4))
    with pytest.raises(DataError, match=r"image .*/images/train/a.png is 8x8 but its label map .*/labels/train/a.png "
                                        r"is 8x6; each label map must match its image pixel for pixel"):
        SegmentationFolder(root=str(root), num_classes=4)[0]


def test_argument_errors(plain):
    root = str(plain[0])
    with pytest.raises(ComponentError, match="the plain layout needs num_classes"):
        SegmentationFolder(root=root)
    with pytest.raises(ComponentError, match=r"ignore_index=3 is one of the 4 classes \(0..3\)"):
        SegmentationFolder(root=root, num_classes=4, ignore_index=3)
    with pytest.raises(ComponentError, match="class_names has 2 names but num_classes is 4"):
        SegmentationFolder(root=root, num_classes=4, class_names=["a", "b"])
