"""``cl-run sweep RECIPE key=v1,v2,... [key=value ...]``: train one variant per value (per combination,
when several keys are swept) and tabulate accuracy, alignment and uniformity against the swept value.

Every variant is checked (validated, built, one batch on the CPU: ``cl-run check``) before the first one
trains, so a bad last value costs no training.
A variant that fails (NaN loss, collapse halt) is recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from clrun.errors import TrainingHalted, UserError
from clrun.recipe import load_recipe
from clrun.report import write_sweep_report
from clrun.run_folder import RunFolder
from clrun.storage import remove_if_empty, write_atomic
from clrun.commands.check import check
from clrun.training.loop import train
from clrun.training.step import NonFiniteLossError


def split_values(text: str) -> list[str]:
    """``0.05,0.1`` -> ["0.05", "0.1"]; commas inside [...] or {...} belong to one YAML value."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    return values + [current]


def parse_arguments(arguments: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(fixed overrides, [(swept key, its values)]): an argument whose value has a top-level comma is swept."""
    fixed, swept = [], []
    for arg in arguments:
        key, sep, value = arg.partition("=")
        values = split_values(value) if sep else [value]
        if len(values) > 1:
            swept.append((key.strip(), [v.strip() for v in values]))
        else:
            fixed.append(arg)
    return fixed, swept


def sweep(recipe_path: str | Path, arguments: list[str]) -> Path:
    """Run the variants one after another in one sweep folder; returns the sweep table's path."""
    fixed, swept = parse_arguments(arguments)
    if not swept:
        raise UserError("sweep: nothing to sweep; give at least one dotted.key=value1,value2 (e.g. loss.temperature=0.1,0.2)")
    keys = [k for k, _ in swept]
    combos = list(itertools.product(*(values for _, values in swept)))
    labels = [",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo)) for combo in combos]
    variants = [fixed + [f"{k}={v}" for k, v in zip(keys, combo)] for combo in combos]
    for overrides in variants:
        check(load_recipe(recipe_path, overrides))
    base = load_recipe(recipe_path, variants[0])
    runs_existed = Path(base.run.dir).is_dir()
    folder = RunFolder.create(base.run.dir, f"{Path(recipe_path).stem}-sweep").path
    try:
        return run_variants(recipe_path, folder, keys, combos, labels, variants)
    except UserError:  # e.g. a full disk at the first variant: leave no empty sweep folder behind
        remove_if_empty(folder)
        if not runs_existed:
            remove_if_empty(Path(base.run.dir))
        raise


def run_variants(recipe_path: str | Path, folder: Path, keys: list[str], combos: list[tuple], labels: list[str],
                 variants: list[list[str]]) -> Path:
    """Train each variant in its own run folder inside the sweep's ``folder``; returns the sweep table's path."""
    rows: list[dict[str, Any]] = []
    for combo, label, overrides in zip(combos, labels, variants):
        print(f"sweep: {label} ({len(rows) + 1}/{len(combos)})", flush=True)
        recipe = load_recipe(recipe_path, overrides + [f"run.dir={folder}", f"run.name={label}"])
        row: dict[str, Any] = {"value": combo[0] if len(combo) == 1 else label, "run": str(folder / label)}
        try:
            run = train(recipe)
            row.update(run.summary)
        except (NonFiniteLossError, TrainingHalted) as exc:
            row["error"] = str(exc).splitlines()[0]
            print(f"sweep: {label} stopped: {row['error']}", flush=True)
        rows.append(row)
        write_atomic(folder / "sweep.json", json.dumps({"keys": keys, "rows": rows}, indent=2) + "\n", "sweep")
    return write_sweep_report(folder, ",".join(keys), rows)
