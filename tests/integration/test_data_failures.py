"""A data set that fails in a DataLoader worker: the error comes out without torch's wrapper, naming
the file (a DataError) or the data set's component, plugin and recipe line (anything else)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import clrun
from clrun import plugin_manager
from clrun.cli import main as cl_run_main

pytestmark = pytest.mark.usefixtures("no_report")  # these runs are not about the report

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


class Breaks(Dataset):
    """Images until item ``at``, where it raises a DataError (``kind: data``) or a plugin bug."""

    def __init__(self, kind: str = "data", at: int = 40) -> None:
        self.kind, self.at = kind, at

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        if i == self.at:
            if self.kind == "data":
                raise clrun.DataError(f"/data/img_{i}.png: cannot decode the image (truncated file)")
            raise ZeroDivisionError("division by zero in the plugin")
        return torch.full((3, 32, 32), i % 255, dtype=torch.uint8), 0


@pytest.fixture
def registry_with_breaks(monkeypatch):
    registry = plugin_manager.load_registry(autoload=False)
    registry.add_all([clrun.Component("dataset", "tests/breaks", Breaks, "fails at one item")], "tests.plugin (tests-dist 1.2)")
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    yield
    plugin_manager.set_default_registry(None)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind, code, expected", [
    ("data", 2, "cl-run: error: /data/img_40.png: cannot decode the image (truncated file)"),
    ("bug", 1, "cl-run: training stopped: dataset tests/breaks from tests.plugin (tests-dist 1.2) ("),
])
def test_a_data_set_failing_in_a_worker_is_reported_without_torchs_wrapper(
        registry_with_breaks, tmp_path, capsys, workers, kind, code, expected):
    result = cl_run_main([str(TINY), f"run.dir={tmp_path}", "health.enabled=false", f"data.num_workers={workers}",
                          f"data.dataset={{name: tests/breaks, kind: {kind}}}"])
    err = capsys.readouterr().err
    assert result == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(expected)
    assert "DataLoader worker" not in err and "Traceback" not in err
    if kind == "bug":
        assert last.endswith("failed while loading a batch: ZeroDivisionError: division by zero in the plugin "
                             "(-v shows the traceback)")
