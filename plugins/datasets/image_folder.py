"""The user's own images: a folder searched recursively, optionally one subfolder per class."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import torch
from PIL import Image
from torch.utils.data import Dataset

from clrun import ComponentError, DataError, DataNotFoundError, Range, checked
from clrun.image_files import DEFAULT_EXTENSIONS, find_images
from clrun.plugins.datasets.decode import DECODE_ERRORS, letterboxed_image, square_image, to_tensor
from clrun.plugins.datasets.class_folders import checked_class_list, class_labels
from clrun.plugins.datasets.unreadable import SkippedImages


def _normalize_extensions(extensions: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """Lower-case, dot-prefixed extensions; a recipe may write "JPG" or "jpg" for ".jpg"."""
    if isinstance(extensions, str):
        extensions = (extensions,)
    normalized = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions if e)
    if not normalized:
        raise ComponentError("clrun/image_folder: `extensions` is empty; give at least one, e.g. ['.jpg', '.png']",
                             argument="extensions")
    return normalized


@checked
class ImageFolder(Dataset):
    """Images from a folder tree, decoded, resized and center-cropped to ``size`` x ``size`` on access (or,
    with ``keep_aspect``, whole).

    root:       the folder; searched recursively.
    size:       side of the square images served (the shorter side is resized to it, then center-cropped).
    labels:     "subfolders": the class is the first-level subfolder an image sits in (ImageNet layout);
                "none": unlabeled (label -1); "auto": "subfolders" when every image is inside a first-level
                subfolder and there are at least two of them, else "none".
    channels:   1 (grayscale) or 3 (RGB); every image is converted.
    extensions: file name endings to include (case-insensitive).
    classes:    the class list, e.g. [cat, dog]: class k is the subfolder named classes[k] (implies
                labels="subfolders"). Give a train and a test set the same list and their labels agree
                whatever their folders hold; a listed class without images is an error. Unset: the
                subfolders in alphabetical order, and an empty one is an error (it would shift the labels).
    keep_aspect: serve each image whole, its aspect ratio kept: resized so that its longer side is ``size``
                and centered on a black ``size`` x ``size`` square, with its place on it, so that the views'
                ``clrun/random_resized_crop`` crops from the whole image (the papers' crops from the full
                file) rather than from its center square. Give ``size`` above the views' size (e.g. 288 for
                224-pixel views) so the crops are taken from more pixels than they keep. Items are then
                ``(image, label, place)``, ``place`` = ``[top, left, height, width]`` on the square.
    on_error:   what a file that cannot be decoded does when it is read: "stop" the run with an error
                naming it, or "skip" it (the next readable image is served in its place), name it on the
                console and count it (the run's metric ``skipped_images``).
    """

    def __init__(
        self,
        root: str | None = None,
        size: Annotated[int, Range(min=1)] = 224,
        labels: Literal["auto", "subfolders", "none"] = "auto",
        channels: Literal[1, 3] = 3,
        extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
        classes: Optional[list[str]] = None,
        on_error: Literal["stop", "skip"] = "stop",
        keep_aspect: bool = False,
    ):
        classes = checked_class_list(classes)
        self.image_shape: tuple[int, int, int] = (channels, size, size)
        self.size = size
        self.mode = "L" if channels == 1 else "RGB"
        # Read by the training setup: the views must then begin with a crop that samples inside each place.
        self.serves_places = keep_aspect
        extensions = _normalize_extensions(extensions)

        # The shape is known without any file, so `cl-run check` can go on with a synthetic batch.
        if root is None:
            raise DataNotFoundError(
                "clrun/image_folder: no data root given: set data.dataset.root (a folder of images, optionally "
                "one subfolder per class), e.g. `cl-run RECIPE data.dataset.root=/data/imagenet/train`",
                expected_shape=self.image_shape,
            )
        folder = Path(root).expanduser()
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise DataNotFoundError(f"clrun/image_folder: data root {folder} {what}", expected_shape=self.image_shape)
        files = find_images(folder, extensions)
        patterns = ", ".join(f"**/*{e}" for e in extensions)
        if not files:
            raise DataNotFoundError(
                f"clrun/image_folder: no images in {folder} (searched {patterns}, case-insensitive)",
                expected_shape=self.image_shape,
            )

        # A first-level subfolder is the class; files directly in root have no class.
        self.label_mode, self.classes, self.targets = class_labels(folder, files, labels, classes, patterns)
        self.root = folder
        self.files: list[Path] = [folder / f for f in files]
        self.on_error = on_error
        self.skipped: SkippedImages | None = SkippedImages("clrun/image_folder", self.files) if on_error == "skip" else None

    @property
    def skipped_images(self) -> int | None:
        """How many unreadable files were skipped so far (across DataLoader workers); None with
        ``on_error="stop"``, where nothing is ever skipped. The health monitor logs it each epoch."""
        return None if self.skipped is None else self.skipped.count()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, torch.Tensor]:
        index, (image, place) = self._readable(i)
        if self.serves_places:
            return to_tensor(image), self.targets[index], torch.tensor(place)
        return to_tensor(image), self.targets[index]

    def _readable(self, i: int) -> tuple[int, tuple[Image.Image, tuple[int, int, int, int]]]:
        """``(i, (image i, its place))``; with ``on_error="skip"``, for an unreadable file the first readable one after it
        (wrapping around): a batch keeps its size, and an index always gives the same image."""
        if self.skipped is None or not self.skipped.known(i):
            try:
                return i, self._load(self.files[i])
            except DECODE_ERRORS as e:
                if self.skipped is None:
                    raise DataError(
                        f"clrun/image_folder: cannot read image {self.files[i]} ({type(e).__name__}: {e}); remove "
                        f"or replace it, or set on_error: skip on this data set to skip unreadable images and count them"
                    ) from e
                self.skipped.record(i, e)
        n = len(self.files)
        for j in ((i + k) % n for k in range(1, n)):
            if self.skipped.known(j):
                continue
            try:
                return j, self._load(self.files[j])
            except DECODE_ERRORS as e:
                self.skipped.record(j, e)
        raise DataError(f"clrun/image_folder: none of the {n} images in {self.root} can be read "
                        f"(e.g. {self.files[i]}); replace them, or check the `extensions` setting")

    def _load(self, path: Path) -> tuple[Image.Image, tuple[int, int, int, int]]:
        """Decode ``path`` as a ``size`` x ``size`` image in ``self.mode``, with the image's place on it."""
        if self.serves_places:
            return letterboxed_image(path, self.size, self.mode)
        return square_image(path, self.size, self.mode), (0, 0, self.size, self.size)
