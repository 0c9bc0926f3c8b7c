"""A segmentation data set from disk: images and their label maps (PNG) in the layout of ADE20K, Pascal VOC,
Cityscapes, or a plain pair of folders.

Items are ``(image, labels)``: a uint8 (3, size, size) image and an int64 (size, size) map of class
indices, ``ignore_index`` where a pixel has no class. Each layout keeps its own file conventions (ADE20K's
0 is "other", VOC's and Cityscapes' 255 is void); the items follow one convention, so an evaluator reads
every layout alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from clrun import ComponentError, DataError, DataNotFoundError, Range, checked
from clrun.image_files import DEFAULT_EXTENSIONS, find_images
from clrun.plugins.datasets.decode import DECODE_ERRORS, to_tensor
from clrun.plugins.datasets.fashion_mnist import Subset, pick_subset

NAME = "clrun/segmentation_folder"

VOID = 255
"""The file value of unlabelled pixels in the VOC, Cityscapes and plain layouts (VOC's object borders,
Cityscapes' trainId of the classes left out of evaluation)."""

# Label maps hold class indices: 8-bit gray, palette (its indices, never its colors) or 16/32-bit gray.
INDEX_MODES = ("L", "P", "I", "I;16")


@dataclass(frozen=True)
class Layout:
    """Where one layout keeps a split's files, and how its label files encode classes."""

    num_classes: Optional[int]  # the benchmark's classes; None: the recipe says
    expects: str  # what root must hold, for messages; {split} is the split's folder name
    zero_is_void: bool = False  # ADE20K's reduce_zero_label: value 0 is unlabelled, value v is class v - 1


LAYOUTS: dict[str, Layout] = {
    "ade20k": Layout(150, "images/{split}/*.jpg and annotations/{split}/*.png (root is ADEChallengeData2016)",
                     zero_is_void=True),
    "voc": Layout(21, "JPEGImages/*.jpg, SegmentationClass/*.png and ImageSets/Segmentation/{split}.txt "
                      "(root is VOCdevkit/VOC2012)"),
    "cityscapes": Layout(19, "leftImg8bit/{split}/CITY/*_leftImg8bit.png and "
                             "gtFine/{split}/CITY/*_gtFine_labelTrainIds.png"),
    "plain": Layout(None, "images/{split}/ and labels/{split}/ (each image's label map a .png of the same name)"),
}

# ADE20K names its splits "training" and "validation"; the usual short names are accepted too.
ADE20K_SPLITS = {"train": "training", "val": "validation"}


@checked
class SegmentationFolder(Dataset):
    """Images and per-pixel class labels (PNG label maps) from a folder in a common layout.

    root:        the data set's folder (ADE20K: ADEChallengeData2016; VOC: VOCdevkit/VOC2012; Cityscapes:
                 the folder holding leftImg8bit and gtFine).
    layout:      "ade20k": images/{split}/*.jpg + annotations/{split}/*.png, value 0 unlabelled, value v
                 class v - 1 (the reduce_zero_label convention); "voc": JPEGImages + SegmentationClass palette
                 PNGs (the palette index is the class, 255 the void border), split lists in
                 ImageSets/Segmentation/{split}.txt; "cityscapes": leftImg8bit/{split}/CITY/*_leftImg8bit.png
                 + gtFine/{split}/CITY/*_gtFine_labelTrainIds.png (255 void); "plain": images/{split}/ +
                 labels/{split}/, each label map a .png with the image's name, value = class, 255 void.
    split:       the split's folder or list name, e.g. "train", "val" (ADE20K's "training" and
                 "validation" may be written so too).
    size:        images and label maps are resized to size x size (aspect not kept: every labelled pixel
                 stays in the item, and items batch): bilinear, antialiased, for the image; nearest for the
                 labels (each output pixel takes the label under its center, so no class is invented).
    num_classes: the classes (ade20k 150, voc 21, cityscapes 19); required for "plain" unless class_names
                 gives them.
    ignore_index: the label served for unlabelled pixels, whatever value the layout's files use for them.
    class_names: one name per class; default "class_0", "class_1", ...
    subset:      use only this many images, a fixed random draw made with ``seed``.
    seed:        seed of the subset draw.

    Files are listed at construction (a missing folder or label map is an error then) and decoded per item.
    A label value that is neither a class nor the layout's void value is a ``clrun.DataError`` naming the
    file when the item is read.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        layout: Literal["ade20k", "voc", "cityscapes", "plain"] = "plain",
        split: str = "train",
        size: Annotated[int, Range(min=1)] = 224,
        num_classes: Optional[Annotated[int, Range(min=1)]] = None,
        ignore_index: int = 255,
        class_names: Optional[list[str]] = None,
        subset: Subset = None,
        seed: int = 0,
    ):
        self.image_shape: tuple[int, int, int] = (3, size, size)
        self.layout, self.split, self.size = layout, split, size
        self.num_classes = class_count(layout, num_classes, class_names)
        self.class_names: list[str] = [str(c) for c in class_names or (f"class_{k}" for k in range(self.num_classes))]
        if 0 <= ignore_index < self.num_classes:
            raise ComponentError(f"{NAME}: ignore_index={ignore_index} is one of the {self.num_classes} classes "
                                 f"(0..{self.num_classes - 1}); use a value outside them, e.g. 255",
                                 argument="ignore_index")
        self.ignore_index = ignore_index
        if root is None:
            raise DataNotFoundError(f"{NAME}: no data root given: set root to the folder holding "
                                    f"{expects(layout, split)}", expected_shape=self.image_shape)
        self.root = Path(root).expanduser()
        try:
            self.pairs: list[tuple[Path, Path]] = LISTERS[layout](self.root, layout, split)
        except DataNotFoundError as e:
            e.expected_shape = self.image_shape  # `cl-run check` goes on with random images of this shape
            raise
        index = pick_subset(len(self.pairs), subset, seed, NAME)
        if index is not None:
            self.pairs = [self.pairs[i] for i in index.tolist()]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image_path, label_path = self.pairs[i]
        labels = self.read_labels(label_path)
        image = read_image(image_path, self.size, labels.shape, label_path)
        return to_tensor(image), torch.from_numpy(self.served(resized_nearest(labels, self.size)))

    def read_labels(self, path: Path) -> np.ndarray:
        """The label file as its values, full size, checked: each is a class or the layout's void value."""
        values = read_label_file(path)
        zero_is_void = LAYOUTS[self.layout].zero_is_void
        void, shift = (0, 1) if zero_is_void else (VOID, 0)
        bad = (values != void) & ((values < shift) | (values >= self.num_classes + shift))
        if bad.any():
            value = int(values[bad].max())
            meaning = f" (class {value - 1} in the ade20k layout, where value v is class v - 1)" if zero_is_void else ""
            raise DataError(
                f"{NAME}: {path} has label value {value}{meaning}, which is not a class (0..{self.num_classes - 1}) "
                f"nor the void value {void}; set num_classes to the data set's number of classes, or fix the file"
            )
        return values

    def served(self, values: np.ndarray) -> np.ndarray:
        """File values as served labels: int64 class indices, ``ignore_index`` on unlabelled pixels."""
        values = values.astype(np.int64)
        if LAYOUTS[self.layout].zero_is_void:
            return np.where(values == 0, self.ignore_index, values - 1)
        return np.where(values == VOID, self.ignore_index, values)


def class_count(layout: str, num_classes: Optional[int], class_names: Optional[list[str]]) -> int:
    """``num_classes``, else as many as ``class_names``, else the layout's benchmark count."""
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise ComponentError(f"{NAME}: class_names has {len(class_names)} names but num_classes is {num_classes}; "
                             f"give one name per class", argument="class_names")
    if class_names is not None and not class_names:
        raise ComponentError(f"{NAME}: class_names is empty; name each class, or leave it unset",
                             argument="class_names")
    count = num_classes or (len(class_names) if class_names else LAYOUTS[layout].num_classes)
    if count is None:
        raise ComponentError(f"{NAME}: the plain layout needs num_classes (or class_names): the number of "
                             f"classes its label maps use", argument="num_classes")
    return count


def expects(layout: str, split: str) -> str:
    """What root must hold for ``layout``'s ``split``, in words."""
    return LAYOUTS[layout].expects.format(split=folder_split(layout, split))


def folder_split(layout: str, split: str) -> str:
    """The split's name on disk: ADE20K's "training" for "train", "validation" for "val"."""
    return ADE20K_SPLITS.get(split, split) if layout == "ade20k" else split


# --- Listing each layout's (image, label map) pairs -------------------------------------------------------


def _folder(root: Path, relative: str, layout: str, split: str) -> Path:
    """``root / relative``, which must be a folder (else DataNotFoundError naming it and the layout)."""
    folder = root / relative
    if not folder.is_dir():
        raise DataNotFoundError(f"{NAME}: {folder} not found: the {layout} layout expects {expects(layout, split)} "
                                f"under root {root}; set root (and split) to such a folder")
    return folder


def _matched(images: Path, labels: Path, label_name: Callable[[Path], Path],
             keep: Callable[[Path], bool] = lambda f: True) -> list[tuple[Path, Path]]:
    """Each image under ``images`` (recursively, sorted) with its label map ``labels / label_name(path
    relative to images)``."""
    files = [f for f in find_images(images, DEFAULT_EXTENSIONS) if keep(f)]
    if not files:
        raise DataNotFoundError(f"{NAME}: no images in {images} (searched {', '.join('*' + e for e in DEFAULT_EXTENSIONS)})")
    return _labelled([(images / f, labels / label_name(f)) for f in files], "remove the images that have none")


def _labelled(pairs: list[tuple[Path, Path]], remedy: str) -> list[tuple[Path, Path]]:
    """``pairs`` when every label map exists; else an error naming the first image without one and its
    expected label file (an evaluation that skipped such images would silently score another set)."""
    missing = [(image, label) for image, label in pairs if not label.is_file()]
    if missing:
        (image, label), more = missing[0], len(missing) - 1
        raise DataError(f"{NAME}: image {image} has no label map {label}"
                        + (f" (nor have {more} more images)" if more else "") + f"; add the label maps, or {remedy}")
    return pairs


def _ade20k(root: Path, layout: str, split: str) -> list[tuple[Path, Path]]:
    split = folder_split(layout, split)
    images = _folder(root, f"images/{split}", layout, split)
    labels = _folder(root, f"annotations/{split}", layout, split)
    return _matched(images, labels, lambda f: f.with_suffix(".png"))


def _plain(root: Path, layout: str, split: str) -> list[tuple[Path, Path]]:
    images = _folder(root, f"images/{split}", layout, split)
    labels = _folder(root, f"labels/{split}", layout, split)
    return _matched(images, labels, lambda f: f.with_suffix(".png"))


def _cityscapes(root: Path, layout: str, split: str) -> list[tuple[Path, Path]]:
    images = _folder(root, f"leftImg8bit/{split}", layout, split)
    labels = _folder(root, f"gtFine/{split}", layout, split)
    suffix = "_leftImg8bit.png"
    try:
        return _matched(images, labels, lambda f: f.with_name(f.name.removesuffix(suffix) + "_gtFine_labelTrainIds.png"),
                        keep=lambda f: f.name.endswith(suffix))
    except DataError as e:
        if next(labels.rglob("*_gtFine_labelIds.png"), None) is None:
            raise
        raise DataError(f"{e}. {labels} holds *_gtFine_labelIds.png but not the trainId maps: make them with "
                        f"cityscapesScripts (`CITYSCAPES_DATASET={root} csCreateTrainIdLabelImgs`)") from None


def _voc(root: Path, layout: str, split: str) -> list[tuple[Path, Path]]:
    images = _folder(root, "JPEGImages", layout, split)
    labels = _folder(root, "SegmentationClass", layout, split)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataNotFoundError(f"{NAME}: split list {listing} not found: the voc layout expects "
                                f"{expects(layout, split)}; set split to a list there (train, val, trainval)")
    names = listing.read_text().split()
    if not names:
        raise DataNotFoundError(f"{NAME}: split list {listing} names no images")
    absent = [images / f"{n}.jpg" for n in names if not (images / f"{n}.jpg").is_file()]
    if absent:
        raise DataError(f"{NAME}: {listing} names {absent[0].stem}, but {absent[0]} does not exist"
                        + (f" ({len(absent) - 1} more are missing)" if len(absent) > 1 else "")
                        + "; restore the images, or use a split list that matches them")
    pairs = [(images / f"{n}.jpg", labels / f"{n}.png") for n in names]
    return _labelled(pairs, f"remove the images that have none from {listing}")


LISTERS: dict[str, Callable[[Path, str, str], list[tuple[Path, Path]]]] = {
    "ade20k": _ade20k, "voc": _voc, "cityscapes": _cityscapes, "plain": _plain,
}


# --- Decoding ----------------------------------------------------------------------------------------------


def read_label_file(path: Path) -> np.ndarray:
    """A label map's values, as stored: a palette PNG's indices (never its colors), a gray PNG's levels."""
    try:
        with Image.open(path) as image:
            if image.mode not in INDEX_MODES:
                raise DataError(
                    f"{NAME}: label map {path} is a {image.mode} image, not one of class indices; save label maps as "
                    f"8-bit gray (L) or palette (P) PNGs whose values are the classes (a color-coded map must be "
                    f"converted to indices first)"
                )
            return np.array(image)
    except DECODE_ERRORS as e:
        raise DataError(f"{NAME}: cannot read label map {path} ({type(e).__name__}: {e}); replace it") from e


def read_image(path: Path, size: int, label_shape: tuple[int, ...], label_path: Path) -> Image.Image:
    """The image as RGB, resized to ``size`` x ``size`` (PIL's bilinear filter widens its support when
    shrinking, i.e. it is antialiased); it must be as large as its label map."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if (height, width) != tuple(label_shape):
                raise DataError(f"{NAME}: image {path} is {width}x{height} but its label map {label_path} is "
                                f"{label_shape[1]}x{label_shape[0]}; each label map must match its image pixel for pixel")
            image.draft("RGB", (size, size))  # JPEG's decode-time downscaling, never below size
            image = image.convert("RGB")  # forces the full decode inside the try
    except DECODE_ERRORS as e:
        raise DataError(f"{NAME}: cannot read image {path} ({type(e).__name__}: {e}); remove or replace it") from e
    return image.resize((size, size), Image.Resampling.BILINEAR)


def resized_nearest(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` (H, W) at ``size`` x ``size``: each output pixel takes the value under its center."""
    height, width = values.shape
    rows = ((np.arange(size) + 0.5) * height / size).astype(np.int64)
    cols = ((np.arange(size) + 0.5) * width / size).astype(np.int64)
    return values[rows[:, None], cols]
