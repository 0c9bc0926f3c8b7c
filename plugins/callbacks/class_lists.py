"""The one class list an evaluator's train and test data sets must share.

A label is an index into a data set's class list. When a train and a test set name their classes
differently (a class folder missing from one split renumbers the classes after it), label 1 means one
class in train and another in test, and an accuracy computed from them is wrong without any sign of it.
An evaluator therefore compares the ``classes`` lists of its data sets when both expose one (every
built-in data set does), as soon as it is built: ``cl-run check`` reports the mismatch, before training.
"""

from __future__ import annotations

from typing import Sequence

from torch.utils.data import Dataset

from clrun import ComponentError

SHOWN = 5  # class names quoted per difference: ImageNet has 1,000


def class_names(dataset: Dataset) -> list[str] | None:
    """The data set's class names, or None when it names none (an unlabeled or a plugin's data set)."""
    classes = getattr(dataset, "classes", None)
    return [str(c) for c in classes] if classes else None


def check_same_classes(owner: str, train: Dataset, test: Dataset, train_name: str = "train",
                       test_name: str = "test") -> None:
    """Raise ComponentError, naming the differences, when ``train`` and ``test`` both name their classes
    and the lists differ (in names or in order). Its ``argument`` is ``test_name``: the names are the
    evaluator's arguments, and the recipe error points at the test set's entry."""
    a, b = class_names(train), class_names(test)
    if a is None or b is None or a == b:
        return
    only_a, only_b = [c for c in a if c not in b], [c for c in b if c not in a]
    differences = []
    if only_b:
        differences.append(f"{test_name} has {_quote(only_b)} that {train_name} lacks")
    if only_a:
        differences.append(f"{train_name} has {_quote(only_a)} that {test_name} lacks")
    if not differences:
        k = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        differences.append(f"the same names in another order (label {k} is {a[k]!r} in {train_name}, {b[k]!r} in {test_name})")
    raise ComponentError(
        f"{owner}: the {train_name} and {test_name} data sets name different classes ({len(a)} and {len(b)}): "
        f"{'; '.join(differences)}. Their labels would not mean the same classes and the accuracy would be "
        f"wrong. Give both the same classes (clrun/image_folder: the same class folders with images, or the "
        f"same `classes: [...]` list in both)",
        argument=test_name,  # the recipe error points at the data set measured on
    )


def _quote(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:SHOWN])
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{shown}{more}"
