"""Which class each image of a folder tree belongs to: its first-level subfolder, in an order that two
data sets (a train and a test split) agree on.

A label is an index into the class list, so a class folder that is empty in one split only (or missing
from it) would shift the labels of every class after it: label 1 would mean ``b`` in train and ``c`` in
test, and an evaluator would report an accuracy of mismatched labels. Such a folder is therefore an
error naming it, and a recipe can state the class list outright (``classes: [a, b, c]``): the labels are
then the positions in that list, the same in every data set that lists it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from clrun import ComponentError, DataError

OWNER = "clrun/image_folder"


def subfolders(root: Path) -> list[str]:
    """The first-level subfolders of ``root`` (symlinked ones included), hidden ones left out as the
    image search leaves them out, sorted."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def checked_class_list(classes: Sequence[str] | None) -> list[str] | None:
    """A recipe's ``classes`` as a list of distinct, non-empty folder names (None stays None)."""
    if classes is None:
        return None
    names = [str(c) for c in classes]
    if not names:
        raise ComponentError(f"{OWNER}: classes is empty: list the class folders (e.g. [cat, dog]), or leave it unset",
                             argument="classes")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ComponentError(f"{OWNER}: classes lists {', '.join(map(repr, repeated))} more than once; each class once",
                             argument="classes")
    bad = [n for n in names if not n or n in (".", "..") or "/" in n or os.sep in n]
    if bad:
        raise ComponentError(f"{OWNER}: classes must be names of first-level subfolders; {', '.join(map(repr, bad))} is not",
                             argument="classes")
    return names


def class_labels(root: Path, files: list[Path], labels: str, classes: list[str] | None,
                 patterns: str) -> tuple[str, list[str], list[int]]:
    """``(label mode, class names, one label per file)`` for ``files`` (paths relative to ``root``).

    ``labels`` is the recipe's "auto", "subfolders" or "none"; ``classes``, when given, is the class list
    (it implies "subfolders"). In "subfolders" mode every class must have at least one image and every
    image must sit in a class folder, else a DataError names the folder and the fix. ``patterns`` says
    what the image search looked for, for the messages.
    """
    in_root = [f for f in files if len(f.parts) == 1]
    with_images = sorted({f.parts[0] for f in files if len(f.parts) > 1})
    if classes is not None:
        if labels == "none":
            raise ComponentError(f"{OWNER}: classes is set but labels='none'; remove one of them (classes implies "
                                 "labels='subfolders')", argument="labels")
        labels = "subfolders"
    elif labels == "auto":
        labels = "subfolders" if not in_root and len(with_images) >= 2 else "none"
    if labels == "none":
        return "none", [], [-1] * len(files)
    if in_root:
        raise DataError(
            f"{OWNER}: labels='subfolders' but {len(in_root)} image(s) sit directly in {root} "
            f"(e.g. {in_root[0]}): move them into a class subfolder, or set labels='none'"
        )
    names = classes if classes is not None else subfolders(root)
    _check_every_class_has_images(root, names, set(with_images), classes is not None, patterns)
    if classes is not None:
        extra = [name for name in with_images if name not in classes]
        if extra:
            raise DataError(
                f"{OWNER}: {root}: subfolder(s) {', '.join(map(repr, extra))} hold images but are not in classes "
                f"{classes}: add them to classes (in every data set that lists them), or move them out of {root}"
            )
    index = {name: i for i, name in enumerate(names)}
    return "subfolders", list(names), [index[f.parts[0]] for f in files]


def _check_every_class_has_images(root: Path, names: list[str], with_images: set[str], listed: bool,
                                  patterns: str) -> None:
    empty = [name for name in names if name not in with_images]
    if not empty:
        return
    folders = ", ".join(str(root / name) + ("" if (root / name).is_dir() else " (no such folder)") for name in empty)
    if listed:
        raise DataError(
            f"{OWNER}: class(es) {', '.join(map(repr, empty))} of classes have no images: {folders} (searched "
            f"{patterns}). Add their images, or remove them from classes in every data set that lists them"
        )
    raise DataError(
        f"{OWNER}: class folder(s) without images: {folders} (searched {patterns}). An empty class would shift "
        f"the labels of the classes after it, so a train and a test split would disagree: add its images, or "
        f"remove the folder from every split (or set labels='none' to train without labels)"
    )
