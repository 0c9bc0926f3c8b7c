"""The contracts of a ``dataset`` component.

The training loop batches ``dataset[i]`` (or a ``clrun.Stream``'s items) with a DataLoader and moves the batch to the device before
any augmentation: every item must be ``(uint8 image (C, H, W), int label)``, one image size for all
items, the label ``-1`` for unlabeled data. A segmentation data set (one with ``num_classes`` and
``ignore_index``: dense evaluators read it) has a label map instead, an int64 ``(H, W)`` tensor of classes
or ``ignore_index``. A data set that letterboxes its images (``serves_places =
True``) adds each image's place on the canvas: ``(image, label, int64 [top, left, height, width])``. A data set whose files are missing raises
``clrun.DataNotFoundError`` so that ``cl-run check`` can go on with random images.
"""

from __future__ import annotations

import inspect
import tempfile
from typing import Any, Callable

import torch
from torch import Tensor

from clrun import DataNotFoundError, create
from clrun.streams import Stream, images_in
from clrun.testing.contract import ContractError, require


def _sample_indices(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


def _sample_items(dataset: Any) -> list[tuple[int, Any]]:
    """(position, item) of a few items: by index, or a stream's first ones (no random access)."""
    if isinstance(dataset, Stream):
        return list(enumerate(dataset.examples(3)))
    return [(i, dataset[i]) for i in _sample_indices(len(dataset))]


def items(kind: str, name: str, **settings: Any) -> None:
    """Items are ``(uint8 (C, H, W) tensor, int label)`` of one shape (the ``image_shape`` it declares, if
    any); labels lie in ``range(len(classes))`` when it names classes, else they are -1 or more. With
    ``serves_places``, a third element: the image's place, inside the canvas."""
    dataset = create(kind, name, **settings)
    require(images_in(dataset) >= 1, "the data set is empty")
    classes = getattr(dataset, "classes", None) or []
    places = bool(getattr(dataset, "serves_places", False))
    expected = "(image, label, place)" if places else "(image, label)"
    shapes = set()
    for i, item in _sample_items(dataset):
        require(isinstance(item, (tuple, list)) and len(item) == 2 + places, f"item {i} is {_describe(item)}; return {expected}")
        image, label = item[:2]
        if places:
            _check_place(i, item[2], image)
        require(
            isinstance(image, Tensor) and image.dtype == torch.uint8 and image.ndim == 3,
            f"item {i}'s image is {_describe(image)}; return a uint8 (C, H, W) tensor (decode and resize in the data set)",
        )
        if is_segmentation(dataset):
            _check_label_map(i, label, image, dataset)
            shapes.add(tuple(image.shape))
            continue
        require(
            isinstance(label, int) and not isinstance(label, bool),
            f"item {i}'s label is {type(label).__name__}; return a Python int (-1 for unlabeled)",
        )
        if classes:
            require(0 <= label < len(classes), f"item {i}'s label {label} is outside 0..{len(classes) - 1} ({len(classes)} classes)")
        else:
            require(label >= -1, f"item {i}'s label is {label}; an unlabeled item has label -1")
        shapes.add(tuple(image.shape))
    require(len(shapes) == 1, f"items have different shapes {sorted(shapes)}; a batch needs one size, resize in the data set")
    declared = getattr(dataset, "image_shape", None)
    require(declared is None or tuple(declared) in shapes, f"it declares image_shape {declared} but its items are {shapes.pop()}")


def is_segmentation(dataset: Any) -> bool:
    """Whether ``dataset``'s labels are per-pixel label maps: it says how many classes and which value is ignored."""
    return isinstance(getattr(dataset, "num_classes", None), int) and isinstance(getattr(dataset, "ignore_index", None), int)


def _check_label_map(i: int, label: Any, image: Tensor, dataset: Any) -> None:
    require(isinstance(label, Tensor) and label.dtype == torch.int64 and tuple(label.shape) == tuple(image.shape[1:]),
            f"item {i}'s label map is {_describe(label)}; return an int64 tensor of the image's (H, W)")
    n, ignore = dataset.num_classes, dataset.ignore_index
    found = label[(label != ignore) & ((label < 0) | (label >= n))].unique().tolist()[:5]
    require(not found, f"item {i}'s label map holds {found}, neither a class (0..{n - 1}) nor ignore_index {ignore}")
    names = getattr(dataset, "class_names", None)
    require(names is None or len(names) == n, f"class_names has {len(names or [])} names for {n} classes")


def _check_place(i: int, place: Any, image: Tensor) -> None:
    require(isinstance(place, Tensor) and place.dtype == torch.int64 and tuple(place.shape) == (4,),
            f"item {i}'s place is {_describe(place)}; return an int64 tensor [top, left, height, width]")
    top, left, height, width = place.tolist()
    _, h, w = image.shape
    require(height >= 1 and width >= 1 and 0 <= top <= h - height and 0 <= left <= w - width,
            f"item {i}'s place {place.tolist()} is not inside its {h}x{w} image")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def deterministic_items(kind: str, name: str, **settings: Any) -> None:
    """Reading an item twice gives the same image and label: augmentation happens on the device, and
    resuming or evaluating must see the same data."""
    dataset = create(kind, name, **settings)
    for (i, (a, label_a, *place_a)), (_, (b, label_b, *place_b)) in zip(_sample_items(dataset), _sample_items(dataset)):
        same_place = all(torch.equal(x, y) for x, y in zip(place_a, place_b))
        same_label = torch.equal(label_a, label_b) if isinstance(label_a, Tensor) else label_a == label_b
        require(torch.equal(a, b) and same_label and same_place, f"item {i} differs between two reads")


def missing_root(kind: str, name: str, **settings: Any) -> None:
    """With ``root`` an empty folder it raises ``clrun.DataNotFoundError`` naming the folder (and what to put
    there): ``cl-run check`` then goes on with random images."""
    with tempfile.TemporaryDirectory() as empty:
        try:
            dataset = create(kind, name, **{**settings, "root": empty})
        except DataNotFoundError as exc:
            require(empty in str(exc), f"the error does not name the folder {empty}: {exc}")
            return
        raise ContractError(f"an empty root gave a data set of {len(dataset)} items; raise clrun.DataNotFoundError")


def takes_a_root(factory: Callable[..., Any]) -> bool:
    """Whether a data set factory reads files from a ``root`` argument."""
    try:
        return "root" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a factory without an inspectable signature
        return False


CONTRACTS: dict[str, Callable[..., None]] = {
    "items": items,
    "deterministic_items": deterministic_items,
    "missing_root": missing_root,
}

# Contracts that apply only to some factories; the others apply to every data set.
APPLIES: dict[str, Callable[[Callable[..., Any]], bool]] = {"missing_root": takes_a_root}
