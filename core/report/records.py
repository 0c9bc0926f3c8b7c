"""The run folder's files, read for the report, and the atomic writes of what the report adds.

A report is also written for runs that crashed or were halted, so every reader here tolerates what such
a run leaves: a missing file, a torn last line of a JSONL file, a missing key, and NaN written as the
string ``"nan"`` (JSON has no NaN). Problems are collected, not raised: the report says what is missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from clrun.run_folder import RunFolder

BRANCHES = ("backbone", "projector")
HEALTH_METRICS = ("alignment", "uniformity", "std_sqrt_d", "rankme", "pos_cosine", "neg_cosine")


@dataclass
class RunRecords:
    """Everything the report draws on; an absent file leaves its field empty and its name in ``missing``."""

    directory: Path
    recipe: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None  # the summary record, else the metrics file's "final" line
    health: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None  # the record `cl-run eval` writes
    resumes: list[dict[str, Any]] = field(default_factory=list)  # resumes that changed the recipe
    init: dict[str, Any] | None = None  # what the recipe's init: section loaded (RunFolder.init)
    token_maps: dict[str, Any] | None = None  # the arrays of RunFolder.token_maps (a ViT backbone's PCA and attention)
    space: dict[str, Any] | None = None  # the arrays of RunFolder.space (clrun.space: the map, the retrieval grid)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def halted(self) -> str | None:
        message = (self.final or {}).get("halted")
        return str(message) if message else None


def read_run(run_dir: Path) -> RunRecords:
    folder = RunFolder(run_dir)
    records = RunRecords(directory=folder.path)
    recipe = _read_yaml(folder.recipe, records)
    records.recipe = recipe if isinstance(recipe, dict) else {}
    for line in _read_jsonl(folder.metrics, records):
        kind = line.get("kind")
        if kind == "step":
            records.steps.append(line)
        elif kind == "epoch":
            records.epochs.append(line)
        elif kind == "final":
            records.final = line
    summary = _read_json(folder.summary, records)
    if isinstance(summary, dict):
        records.final = summary  # written atomically at the end: the authority over the metrics line
    records.health = [h for h in _read_jsonl(folder.health, records) if isinstance(h.get("metrics"), dict)]
    records.resumes = _read_jsonl(folder.resumes, records, optional=True)
    use_evaluation(records, folder.evaluation)
    records.token_maps = read_npz(folder.token_maps, records)
    records.space = read_npz(folder.space, records)
    init = _read_json(folder.init, records, optional=True)
    records.init = init if isinstance(init, dict) else None
    return records


def use_evaluation(records: RunRecords, path: Path) -> None:
    """The evaluation record at ``path`` (``cl-run eval`` writes it) as the report's, when there is one."""
    evaluation = _read_json(path, records, optional=True)
    if isinstance(evaluation, dict) and isinstance(evaluation.get("results"), dict):
        records.evaluation = evaluation


def read_npz(path: Path, records: RunRecords) -> dict[str, Any] | None:
    """The arrays of an optional ``.npz`` file (no pickled objects: ``allow_pickle=False``); None if absent."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as exc:
        records.problems.append(f"{path.name}: unreadable ({type(exc).__name__}: {exc})")
        return None


def number(value: Any) -> float | None:
    """A float from a metric value (``"nan"``/``"inf"`` strings included); None for anything else."""
    if isinstance(value, bool):  # a bool is an int to Python, never a metric
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def epoch_of(record: dict[str, Any]) -> int:
    x = number(record.get("epoch"))
    return int(x) if x is not None and math.isfinite(x) else 0


def is_accuracy(key: str) -> bool:
    return key.endswith("top1") or key.endswith("top1_projector")


def accuracy_base(key: str) -> str:
    """``knn_top1_projector`` -> ``knn_top1``: the evaluation a key belongs to, whatever the branch."""
    return key[: -len("_projector")] if key.endswith("_projector") else key


# The standard evaluations first, in the order a reader compares them; any other ``*_top1`` after.
EVALUATIONS = {
    "knn_top1": "kNN",
    "linear_top1": "linear probe",
    "online_top1": "online probe",
    "finetune_top1": "fine-tune",
    "online_train_top1": "online probe (training batches)",
}


def evaluation_label(base: str) -> str:
    return EVALUATIONS.get(base, base.removesuffix("_top1").replace("_", " ") + " top-1")


def accuracy_label(base: str) -> str:
    """``knn_top1`` -> ``kNN top-1``; ``foo_top1`` -> ``foo top-1`` (its evaluation label says top-1 already)."""
    label = evaluation_label(base)
    return label if label.endswith("top-1") else f"{label} top-1"


def ordered_bases(keys) -> list[str]:
    bases = {accuracy_base(k) for k in keys if is_accuracy(k)}
    known = [b for b in EVALUATIONS if b in bases]
    return known + sorted(bases - set(known))


# Dense (per-pixel) evaluations of the patch features name their scores ``<name>_miou`` (mean IoU over the
# classes) and ``<name>_pixel_accuracy``, both in [0, 1]; recognized by the suffix, whatever the evaluator.
DENSE_SCORES = {"_miou": "mIoU", "_pixel_accuracy": "pixel accuracy"}


def dense_score(key: str) -> str | None:
    """The dense score a key holds (``_miou`` or ``_pixel_accuracy``, whatever the branch); None for others."""
    return next((s for s in DENSE_SCORES if accuracy_base(key).endswith(s)), None)


def is_dense_miou(key: str) -> bool:
    return dense_score(key) == "_miou"


def dense_label(base: str) -> str:
    """``patch_knn_miou`` -> ``patch knn mIoU``."""
    score = dense_score(base)
    if score is None:
        return base
    return f"{base.removesuffix(score).replace('_', ' ')} {DENSE_SCORES[score]}".strip()


def ordered_dense_bases(keys) -> list[str]:
    """The dense scores' bases, by evaluation name, each evaluation's mIoU before its pixel accuracy."""
    bases = {accuracy_base(k) for k in keys if dense_score(k)}
    order = list(DENSE_SCORES)
    return sorted(bases, key=lambda b: (b.removesuffix(dense_score(b)), order.index(dense_score(b))))


def health_value(metrics: dict[str, Any], name: str, branch: str) -> float | None:
    """A health metric of one branch. The monitor writes ``<name>_backbone``; a bare ``<name>`` is the
    backbone's in older files, but only a fallback: a loss may log its own bare ``pos_cosine``."""
    if branch == "projector":
        return number(metrics.get(f"{name}_projector"))
    value = number(metrics.get(f"{name}_backbone"))
    return value if value is not None else number(metrics.get(name))


def health_checks(records: RunRecords) -> list[tuple[int, dict[str, Any]]]:
    """(epoch, metrics) of every health check: the health file, else the epoch records that carry health keys."""
    if records.health:
        return [(epoch_of(h), h["metrics"]) for h in records.health]
    checks = []
    for record in records.epochs:
        if any(health_value(record, m, b) is not None for m in ("uniformity", "std_sqrt_d", "rankme")
               for b in BRANCHES):
            checks.append((epoch_of(record), record))
    return checks


def results(records: RunRecords) -> dict[str, float]:
    """The run's final numeric results (for a run that never finished: its last epoch's); `cl-run eval`'s
    (a later, dedicated evaluation) override and add."""
    base = records.final if records.final is not None else (records.epochs[-1] if records.epochs else {})
    merged = {k: x for k, v in base.items() if (x := number(v)) is not None}
    if records.evaluation:
        merged.update({k: x for k, v in records.evaluation["results"].items() if (x := number(v)) is not None})
    return merged


def recipe_get(recipe: dict[str, Any], dotted: str) -> Any:
    node: Any = recipe
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _read_yaml(path: Path, records: RunRecords) -> Any:
    text = _read_text(path, records, optional=False)
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        records.problems.append(f"{path.name} is not valid YAML ({type(exc).__name__})")
        return None


def _read_json(path: Path, records: RunRecords, optional: bool = False) -> Any:
    text = _read_text(path, records, optional)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        records.problems.append(f"{path.name} is not valid JSON")
        return None


def _read_jsonl(path: Path, records: RunRecords, optional: bool = False) -> list[dict[str, Any]]:
    text = _read_text(path, records, optional=optional)
    if text is None:
        return []
    lines, bad = [], 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:  # typically the torn last line of a killed run
            bad += 1
            continue
        if isinstance(line, dict):
            lines.append(line)
        else:
            bad += 1
    if bad:
        records.problems.append(f"{path.name}: {bad} unreadable line(s) skipped")
    return lines


def _read_text(path: Path, records: RunRecords, optional: bool) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if not optional:
            records.missing.append(path.name)
    except OSError as exc:
        records.problems.append(f"{path.name} could not be read ({exc.strerror or type(exc).__name__})")
    return None

