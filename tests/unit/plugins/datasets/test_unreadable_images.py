"""A corrupt image found mid-run: by default the run stops with an error naming the file; with
``on_error: skip`` the file is skipped (the next readable image takes its place), named on the console
and counted, across DataLoader workers, in the run's metric ``skipped_images`` and its report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clrun import DataError
from clrun.plugins.datasets.image_folder import ImageFolder

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
GARBAGE = b"\x00garbage, not an image" * 10


def image_folder(root: Path, good: dict[str, int], corrupt: list[str]) -> Path:
    """Class folders of 8x8 PNGs (``good``: count per class) plus undecodable files (``corrupt``: paths)."""
    rng = np.random.default_rng(0)
    for name, count in good.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    for relative in corrupt:
        (root / relative).write_bytes(GARBAGE)
    return root


def decode_error(path: Path) -> str:
    """PIL's own words for ``path`` (the data set quotes them)."""
    try:
        Image.open(path)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    raise AssertionError(f"{path} decodes")


def test_by_default_a_corrupt_image_stops_with_an_error_naming_it(tmp_path):
    root = image_folder(tmp_path, {"a": 2, "b": 2}, ["a/bad.png"])
    ds = ImageFolder(root=str(root), size=8)
    bad = root / "a" / "bad.png"
    with pytest.raises(DataError) as info:
        ds[ds.files.index(bad)]
    assert str(info.value) == (
        f"clrun/image_folder: cannot read image {bad} ({decode_error(bad)}); remove or replace it, or set "
        f"on_error: skip on this data set to skip unreadable images and count them"
    )


def test_skip_serves_the_next_readable_image_names_the_file_once_and_counts_it(tmp_path, capsys):
    root = image_folder(tmp_path, {"a": 2, "b": 2}, ["a/001x.png"])  # the last file of class a
    ds = ImageFolder(root=str(root), size=8, on_error="skip")
    names = [p.relative_to(root).as_posix() for p in ds.files]
    assert names == ["a/000.png", "a/001.png", "a/001x.png", "b/000.png", "b/001.png"]
    assert ds.skipped_images == 0
    image, label = ds[2]
    substitute, substitute_label = ds[3]
    assert torch.equal(image, substitute) and label == substitute_label == 1
    assert torch.equal(ds[2][0], image)  # the same index always gives the same image
    bad = root / "a" / "001x.png"
    assert ds.skipped_images == 1 and ds.skipped.paths() == [bad]
    assert capsys.readouterr().err == (
        f"warning: clrun/image_folder: skipped unreadable image {bad} ({decode_error(bad)}); counted in the "
        f"metric skipped_images\n"
    )


def test_skipping_wraps_around_and_only_the_first_ten_files_are_named(tmp_path, capsys):
    root = image_folder(tmp_path, {"a": 1}, [f"a/{i:03d}x.png" for i in range(12)])
    ds = ImageFolder(root=str(root), size=8, labels="subfolders", on_error="skip")
    # a/000.png, then 12 unreadable files: for the first of them, every later file fails, and the search
    # wraps around to the first file
    assert torch.equal(ds[1][0], ds[0][0])
    assert ds.skipped_images == 12
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 10 and err[-1].endswith("(further unreadable images are skipped without a message)")


def test_a_folder_of_unreadable_files_is_an_error(tmp_path):
    root = image_folder(tmp_path, {}, ["x.png", "y.png"])
    ds = ImageFolder(root=str(root), size=8, on_error="skip")
    with pytest.raises(DataError) as info:
        ds[0]
    assert str(info.value) == (
        f"clrun/image_folder: none of the 2 images in {root} can be read (e.g. {root / 'x.png'}); replace them, "
        f"or check the `extensions` setting"
    )


def test_worker_processes_count_into_the_data_set_the_run_holds(tmp_path, capsys):
    root = image_folder(tmp_path, {"a": 6, "b": 6}, ["a/000x.png", "b/003x.png", "b/005x.png"])
    ds = ImageFolder(root=str(root), size=8, on_error="skip")
    batches = list(DataLoader(ds, batch_size=5, num_workers=2))
    assert sum(len(labels) for _, labels in batches) == 15  # every index served, the skipped ones by a substitute
    assert ds.skipped_images == 3
    assert sorted(p.name for p in ds.skipped.paths()) == ["000x.png", "003x.png", "005x.png"]


# ---------------------------------------------------------------- in a real (tiny) training


def train(tmp_path, monkeypatch, capsys, registry, dataset: str) -> tuple[int, str, Path]:
    from clrun import plugin_manager, report
    from clrun.cli import main

    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    monkeypatch.setattr(report, "write_plots", lambda records, directory: {})  # tests/unit/report/test_report.py draws them
    code = main([str(TINY), f"run.dir={tmp_path / 'runs'}", "run.name=run", "train.epochs=2", "health.samples=8",
                 "data.batch_size=8", f"data.dataset={dataset}"])
    return code, capsys.readouterr().err, tmp_path / "runs" / "run"


def test_a_run_that_meets_a_corrupt_image_stops_with_exit_2_naming_it(tmp_path, monkeypatch, capsys, registry):
    # "z" sorts last: the file is met in the first epoch's batches, after the setup read the first images.
    root = image_folder(tmp_path / "images", {"a": 8, "b": 8}, ["b/zz.png"])
    code, err, _ = train(tmp_path, monkeypatch, capsys, registry, f"{{name: clrun/image_folder, root: {root}, size: 16}}")
    bad = root / "b" / "zz.png"
    assert code == 2
    assert err.splitlines()[-1] == (
        f"cl-run: error: clrun/image_folder: cannot read image {bad} ({decode_error(bad)}); remove or replace it, "
        f"or set on_error: skip on this data set to skip unreadable images and count them"
    )


def test_skipped_images_reach_the_epoch_records_the_summary_and_the_report(tmp_path, monkeypatch, capsys, registry):
    root = image_folder(tmp_path / "images", {"a": 8, "b": 8}, ["a/zz.png", "b/zz.png"])
    code, err, folder = train(tmp_path, monkeypatch, capsys, registry,
                              f"{{name: clrun/image_folder, root: {root}, size: 16, on_error: skip}}")
    assert code == 0, err
    # each file named once, in the order the shuffled batches met them
    assert sorted(re.findall(r"skipped unreadable image (\S+) ", err)) == [str(root / "a" / "zz.png"), str(root / "b" / "zz.png")]
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["skipped_images"] for r in records if r["kind"] == "epoch"] == [2, 2]  # each file counted once
    assert json.loads((folder / "summary.json").read_text(encoding="utf-8"))["skipped_images"] == 2
    assert "| skipped_images | 2 |" in (folder / "report.md").read_text(encoding="utf-8")


def test_a_data_set_that_never_skips_adds_no_metric(tmp_path):
    root = image_folder(tmp_path, {"a": 2, "b": 2}, [])
    assert ImageFolder(root=str(root), size=8).skipped_images is None
