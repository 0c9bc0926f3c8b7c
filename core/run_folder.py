"""The run folder's layout: the one place that names the files a run writes.

Everything that reads or writes a run folder (the training loop, the report, ``cl-run eval``,
``cl-run export``, callbacks) asks a ``RunFolder`` for a file's path instead of spelling its name, so
the layout can change in one place and a reader never disagrees with a writer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from clrun.storage import TEMP_SUFFIX, append_text, discard, make_folder, temp_path, write_atomic, writing

__all__ = ["RunFolder", "append_jsonl", "write_atomic", "temp_path", "jsonable", "TEMP_SUFFIX"]


class RunFolder:
    """One run's folder. Each property is the path of one file (or sub-folder) in it.

    ``FILES`` describes the data files for a person reading the report (which adds itself and its plots).
    """

    FILES: dict[str, str] = {
        "recipe.yaml": "the resolved recipe (every setting the run used)",
        "metrics.jsonl": "every step, epoch and final record",
        "health.jsonl": "every health check, with similarity histograms",
        "summary.json": "the final record",
        "eval.json": "the evaluation by `cl-run eval`",
        "encoder.safetensors": "the trained backbone, loadable with timm or `clrun.export.load_encoder`",
        "checkpoint.pt": "the last checkpoint (resumable)",
        "checkpoint.dcp": "the last checkpoint of a sharded run (train.strategy: fsdp), one shard per process",
        "resumes.jsonl": "every resume that changed the recipe: what changed, from which step",
        "launch.json": "the torchrun job that started the run (its restarts resume the run)",
        "token_maps.npz": "a ViT backbone's patch-feature PCA and class-token attention on a few images (for the report)",
        "space.npz": "the test features' map before training and at the last evaluation, and a retrieval grid (for the report)",
    }

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def lock(self) -> Path:
        return self.path / ".lock"

    # One property per file. Their names are what the rest of the code uses.
    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def health(self) -> Path:
        return self.path / "health.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def evaluation(self) -> Path:
        return self.path / "eval.json"

    @property
    def resumes(self) -> Path:
        return self.path / "resumes.jsonl"

    @property
    def launch(self) -> Path:
        return self.path / "launch.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def sharded_checkpoint(self) -> Path:
        return self.path / "checkpoint.dcp"

    @property
    def encoder(self) -> Path:
        return self.path / "encoder.safetensors"

    @property
    def init(self) -> Path:
        """What the recipe's ``init:`` section loaded: sources with SHA-256, per part the tensors loaded and
        what did not fit, warnings, licences (JSON; only in runs that start from weights)."""
        return self.path / "init.json"

    @property
    def token_maps(self) -> Path:
        return self.path / "token_maps.npz"

    @property
    def space(self) -> Path:
        return self.path / "space.npz"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def remove_temp_files(self) -> list[Path]:
        """Delete the temporary files a killed writer left behind (call it while holding the lock)."""
        stale = sorted(self.path.glob(f".*{TEMP_SUFFIX}"))
        for path in stale:
            discard(path)
        return stale

    def drop_records_after(self, epoch: int, step: int) -> None:
        """Forget what a run logged after its checkpoint (epoch ``epoch``, step ``step``): a resumed run
        logs those steps again, and each step must appear once (a ``final`` record of an earlier, finished
        segment of the run stays: it describes the checkpoint the run continues from)."""

        def kept(record: dict[str, Any]) -> bool:
            if record.get("kind") == "epoch":
                return int(record.get("epoch", 0)) <= epoch
            return int(record.get("step", 0)) <= step

        for path, keep in ((self.metrics, kept), (self.health, lambda r: int(r.get("epoch", 0)) <= epoch)):
            if path.is_file():
                lines = path.read_text(encoding="utf-8").splitlines()
                write_atomic(path, "".join(line + "\n" for line in lines if _parses(line) and keep(json.loads(line))))

    def is_run(self) -> bool:
        """Whether this folder holds a run (its resolved recipe is the first file a run writes)."""
        return self.recipe.is_file()

    @classmethod
    def create(cls, base: str | Path, name: str) -> RunFolder:
        """A new folder ``base/name``; if it exists, ``name-2``, ``name-3``... so no earlier run is touched."""
        root = make_folder(Path(base), "run folder")
        with writing(root, "run folder"):
            for i in range(1, 10_000):
                path = root / (name if i == 1 else f"{name}-{i}")
                try:
                    path.mkdir()
                    return cls(path)
                except FileExistsError:
                    continue
        raise RuntimeError(f"too many runs named {name!r} in {root}")

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run folder a checkpoint file (or a sharded checkpoint's folder) lies in."""
        parent = Path(checkpoint).parent
        return cls(parent.parent if parent.name == cls(".").sharded_checkpoint.name else parent)

    def write_recipe(self, resolved: dict[str, Any]) -> None:
        write_atomic(self.recipe, yaml.safe_dump(resolved, sort_keys=False))

    def append_metrics(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics, record)

    def append_health(self, record: dict[str, Any]) -> None:
        append_jsonl(self.health, record)

    def append_resume(self, record: dict[str, Any]) -> None:
        append_jsonl(self.resumes, record)

    def read_recipe(self) -> dict[str, Any] | None:
        """The resolved recipe the run wrote (None when the file is missing or not a mapping)."""
        if not self.recipe.is_file():
            return None
        data = yaml.safe_load(self.recipe.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.summary, json.dumps(jsonable(summary), indent=2) + "\n")

    def write_init(self, record: dict[str, Any]) -> None:
        write_atomic(self.init, json.dumps(jsonable(record), indent=2) + "\n")

    def read_init(self) -> dict[str, Any] | None:
        """What ``init:`` loaded (``write_init``), or None for a run that started from random weights."""
        try:
            data = json.loads(self.init.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_evaluation(self, record: dict[str, Any]) -> None:
        write_atomic(self.evaluation, json.dumps(jsonable(record), indent=2) + "\n", "eval")


def _parses(line: str) -> bool:
    """Whether a JSONL line is a whole record (a crash can leave a torn last line)."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    append_text(path, json.dumps(jsonable(record)) + "\n", "log")


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings (JSON has no NaN or infinity), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
