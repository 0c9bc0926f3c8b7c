"""Data that cannot be mislabeled: an image folder's classes are one list that a train and a test split
share, and the evaluators refuse train and test sets whose class lists differ, at `cl-run check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clrun import ComponentError, DataError
from clrun.plugins.callbacks.class_lists import check_same_classes
from clrun.plugins.callbacks.finetune import FineTune
from clrun.plugins.callbacks.knn import KNNEvaluation
from clrun.plugins.callbacks.linear_probe import LinearProbe
from clrun.plugins.callbacks.online_probe import OnlineProbe
from clrun.plugins.datasets.image_folder import ImageFolder
from clrun.plugins.datasets.synthetic import Synthetic

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
PATTERNS = "**/*.jpg, **/*.jpeg, **/*.png, **/*.bmp, **/*.webp, **/*.tif, **/*.tiff"


def folders(root: Path, images: dict[str, int]) -> Path:
    """``root`` with one subfolder per class holding that many 8x8 PNGs (0: an empty folder)."""
    rng = np.random.default_rng(0)
    for name, count in images.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


# ---------------------------------------------------------------- one image folder


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = folders(tmp_path, {"a": 2, "b": 0, "c": 2})
    with pytest.raises(DataError) as info:
        ImageFolder(root=str(root), size=8)
    assert str(info.value) == (
        f"clrun/image_folder: class folder(s) without images: {root / 'b'} (searched {PATTERNS}). An empty class "
        f"would shift the labels of the classes after it, so a train and a test split would disagree: add its "
        f"images, or remove the folder from every split (or set labels='none' to train without labels)"
    )


def test_a_folder_of_non_images_counts_as_empty_and_hidden_folders_are_ignored(tmp_path):
    root = folders(tmp_path, {"a": 1, "b": 1, ".thumbnails": 1})
    assert ImageFolder(root=str(root), size=8).classes == ["a", "b"]
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder\(s\) without images: .*notes \(searched"):
        ImageFolder(root=str(root), size=8, labels="subfolders")


def test_an_empty_folder_does_not_matter_without_labels(tmp_path):
    root = folders(tmp_path, {"a": 2, "b": 0, "c": 2})
    ds = ImageFolder(root=str(root), size=8, labels="none")
    assert ds.classes == [] and [ds[i][1] for i in range(len(ds))] == [-1] * 4


def test_classes_fix_the_labels_whatever_the_folders_hold(tmp_path):
    train = folders(tmp_path / "train", {"cat": 1, "dog": 1, "owl": 1})
    ds = ImageFolder(root=str(train), size=8, classes=["owl", "cat", "dog"])
    assert ds.label_mode == "subfolders" and ds.classes == ["owl", "cat", "dog"]
    assert [(p.parent.name, ds[i][1]) for i, p in enumerate(ds.files)] == [("cat", 1), ("dog", 2), ("owl", 0)]


@pytest.mark.parametrize("images, classes, expected", [
    ({"a": 1, "c": 1}, ["a", "b", "c"],
     "clrun/image_folder: class(es) 'b' of classes have no images: {root}/b (no such folder) (searched {patterns}). "
     "Add their images, or remove them from classes in every data set that lists them"),
    ({"a": 1, "b": 0, "c": 1}, ["a", "b", "c"],
     "clrun/image_folder: class(es) 'b' of classes have no images: {root}/b (searched {patterns}). "
     "Add their images, or remove them from classes in every data set that lists them"),
    ({"a": 1, "b": 1, "x": 1, "y": 1}, ["a", "b"],
     "clrun/image_folder: {root}: subfolder(s) 'x', 'y' hold images but are not in classes ['a', 'b']: add them "
     "to classes (in every data set that lists them), or move them out of {root}"),
], ids=["missing folder", "empty folder", "unlisted folders"])
def test_a_class_list_that_does_not_match_the_folders_is_an_error(tmp_path, images, classes, expected):
    root = folders(tmp_path, images)
    with pytest.raises(DataError) as info:
        ImageFolder(root=str(root), size=8, classes=classes)
    assert str(info.value) == expected.format(root=root, patterns=PATTERNS)


@pytest.mark.parametrize("settings, expected", [
    ({"classes": []}, "clrun/image_folder: classes is empty: list the class folders (e.g. [cat, dog]), or leave it unset"),
    ({"classes": ["a", "b", "a"]}, "clrun/image_folder: classes lists 'a' more than once; each class once"),
    ({"classes": ["a", "x/y"]}, "clrun/image_folder: classes must be names of first-level subfolders; 'x/y' is not"),
    ({"classes": ["a", "b"], "labels": "none"},
     "clrun/image_folder: classes is set but labels='none'; remove one of them (classes implies labels='subfolders')"),
    ({"on_error": "ignore"}, "clrun/image_folder: on_error must be one of 'stop', 'skip', got 'ignore'"),
], ids=["empty", "repeated", "nested", "with labels none", "bad on_error"])
def test_bad_class_settings(tmp_path, settings, expected):
    root = folders(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(ComponentError) as info:
        ImageFolder(root=str(root), size=8, **settings)
    assert str(info.value) == expected


# ---------------------------------------------------------------- train and test agree


@pytest.mark.parametrize("train, test, expected", [
    (["a", "b", "c"], ["a", "c"],
     "the train and test data sets name different classes (3 and 2): train has 'b' that test lacks"),
    (["a", "b"], ["a", "b", "z"], "the train and test data sets name different classes (2 and 3): test has 'z' that train lacks"),
    (["a", "b"], ["b", "a"],
     "the train and test data sets name different classes (2 and 2): the same names in another order "
     "(label 0 is 'a' in train, 'b' in test)"),
    ([f"c{i}" for i in range(10)], ["x"],
     "the train and test data sets name different classes (10 and 1): test has 'x' that train lacks; "
     "train has 'c0', 'c1', 'c2', 'c3', 'c4' and 5 more that test lacks"),
], ids=["a class missing from test", "an extra test class", "another order", "long lists"])
def test_different_class_lists_are_refused(train, test, expected):
    a, b = Synthetic(num_images=4, size=4), Synthetic(num_images=4, size=4)
    a.classes, b.classes = train, test
    with pytest.raises(ComponentError) as info:
        check_same_classes("clrun/knn", a, b)
    assert str(info.value) == (
        f"clrun/knn: {expected}. Their labels would not mean the same classes and the accuracy would be wrong. "
        "Give both the same classes (clrun/image_folder: the same class folders with images, or the same "
        "`classes: [...]` list in both)"
    )


def test_data_sets_without_class_names_are_not_compared():
    named, unnamed = Synthetic(num_images=4, size=4), Synthetic(num_images=4, size=4)
    unnamed.classes = []
    check_same_classes("clrun/knn", named, unnamed)  # the evaluators' label checks handle unlabeled sets
    del unnamed.classes
    check_same_classes("clrun/knn", named, unnamed)


@pytest.mark.parametrize("name, evaluator", [
    ("clrun/knn", KNNEvaluation), ("clrun/linear_probe", LinearProbe), ("clrun/finetune", FineTune),
])
def test_every_evaluator_refuses_mismatched_sets_when_built(name, evaluator):
    train = Synthetic(num_images=8, num_classes=3, size=8)
    test = Synthetic(num_images=8, num_classes=2, size=8)
    with pytest.raises(ComponentError) as info:
        evaluator(train=train, test=test)
    assert str(info.value).startswith(
        f"{name}: the train and test data sets name different classes (3 and 2): train has 'class_2' that test lacks. "
    )


def test_the_online_probe_refuses_a_test_set_of_another_class_count():
    test = Synthetic(num_images=8, num_classes=3, size=8)
    with pytest.raises(ComponentError) as info:
        OnlineProbe(num_classes=4, test=test)
    assert str(info.value) == (
        "clrun/online_probe: num_classes=4 but the test data set names 3 classes; the training and test labels "
        "must share one class list: set num_classes to 3 if the training data has those classes, or use a test "
        "set of the training classes"
    )


# ---------------------------------------------------------------- the case, end to end


def knn_recipe(tmp_path: Path, test_images: dict[str, int]) -> list[str]:
    train = folders(tmp_path / "train", {"a": 4, "b": 4, "c": 4})
    test = folders(tmp_path / "test", test_images)
    knn = (f"[{{name: clrun/knn, train: {{name: clrun/image_folder, root: {train}, size: 32}}, "
           f"test: {{name: clrun/image_folder, root: {test}, size: 32}}}}]")
    return [str(TINY), f"run.dir={tmp_path / 'runs'}", f"callbacks={knn}"]


@pytest.mark.parametrize("test_images, expected", [
    ({"a": 2, "b": 0, "c": 2}, "clrun/image_folder: class folder(s) without images: {test}/b (searched"),
    # The error points at the test set's entry (the ComponentError's argument): its column in the override.
    ({"a": 2, "c": 2}, "<command line>:2:{col}: error: callbacks.0.test: callback 'clrun/knn' could not be built: "
                       "clrun/knn: the train and test data sets name different classes (3 and 2): train has 'b' "
                       "that test lacks. Their labels would not mean the same classes"),
], ids=["empty class folder in test", "class folder missing from test"])
def test_check_and_train_refuse_a_test_split_that_lacks_a_class(tmp_path, monkeypatch, capsys, registry,
                                                                  test_images, expected):
    from clrun import plugin_manager
    from clrun.cli import main

    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    argv = knn_recipe(tmp_path, test_images)
    for command in (["check"], []):
        assert main([*command, *argv]) == 2
        err = capsys.readouterr().err
        # A located message carries its own "error:" (one prefix); the others get cl-run's.
        prefix = "" if expected.startswith("<command line>") else "cl-run: error: "
        column = argv[2].index("test: {") + len("test: ") + 1  # at the value: the test set's entry
        assert err.startswith(prefix + expected.format(test=tmp_path / "test", col=column)), err
    assert not (tmp_path / "runs").exists()  # nothing was trained or written
