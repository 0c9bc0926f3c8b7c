"""The run folder has one owner: ``clrun.run_folder.RunFolder`` names its files, nothing else does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clrun.run_folder import RunFolder, append_jsonl, jsonable, write_atomic

REPO = Path(__file__).resolve().parents[2]
LAYOUT = RunFolder("x")
FILE_NAMES = [getattr(LAYOUT, name).name for name in
              ("recipe", "metrics", "health", "summary", "evaluation", "checkpoint", "encoder", "report", "resumes", "token_maps", "space", "launch", "sharded_checkpoint")]


def test_every_file_has_a_property_and_a_description():
    assert set(RunFolder.FILES) <= set(FILE_NAMES)
    assert len(set(FILE_NAMES)) == len(FILE_NAMES)


@pytest.mark.parametrize("name", FILE_NAMES)
def test_no_module_but_the_owner_spells_a_run_folder_file_name(name):
    pattern = re.compile(re.escape(name) + r"(?!\w)")  # checkpoint.pth is another file
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("core", "plugins")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path.name != "run_folder.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == [], f"{name} is spelled outside clrun.run_folder: use a RunFolder property"


def test_create_never_reuses_a_folder(tmp_path):
    first = RunFolder.create(tmp_path, "run")
    second = RunFolder.create(tmp_path, "run")
    assert (first.path.name, second.path.name) == ("run", "run-2")
    assert first.path.is_dir() and second.path.is_dir()


def test_writes_are_whole_and_non_finite_numbers_stay_readable(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_summary({"loss": float("nan"), "nested": {"x": float("inf")}, "n": 3})
    assert json.loads(folder.summary.read_text()) == {"loss": "nan", "nested": {"x": "inf"}, "n": 3}
    append_jsonl(folder.metrics, {"step": 1})
    append_jsonl(folder.metrics, {"step": 2})
    assert [json.loads(line)["step"] for line in folder.metrics.read_text().splitlines()] == [1, 2]
    write_atomic(folder.report, "text")
    assert folder.report.read_text() == "text"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind
    assert jsonable([1.0, float("-inf")]) == [1.0, "-inf"]


def test_a_folder_is_a_run_once_its_recipe_is_written(tmp_path):
    folder = RunFolder(tmp_path)
    assert not folder.is_run()
    folder.write_recipe({"seed": 0})
    assert folder.is_run() and RunFolder.of_checkpoint(folder.checkpoint).path == folder.path
