"""The run folder: resolved recipe, metrics, checkpoint and summary of one run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml


def create(base: str, name: str) -> Path:
    """A new folder ``base/name``; if it exists, ``name-2``, ``name-3``... so no earlier run is touched."""
    root = Path(base)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = root / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"too many runs named {name!r} in {root}")


def write_recipe(path: Path, resolved: dict[str, Any]) -> None:
    with open(path / "recipe.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    tmp = path / ".summary.json.tmp"
    tmp.write_text(json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path / "summary.json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value
