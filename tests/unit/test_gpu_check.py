"""bench/gpu_check.py, the GPU validation run, kept from rotting between the rare runs on a GPU machine.

CI runs it as a CPU machine can: every section at tiny sizes (``DEVICE=cpu``, about 30 s on 2 cores), and the
GPU run's recipes loaded with the overrides that run will use (``--dry-run --device cuda``, no GPU needed).
Each in a fresh process, as on the GPU machine: the check imports cl-run from the working tree and offers
its own components in its process's registry only.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
SECTIONS = {"environment", "smoke", "syncs", "throughput", "compile", "knn", "run"}


def run_check(out: Path, *options: str, device: str = "cpu") -> tuple[subprocess.CompletedProcess, dict]:
    """The script's run and its JSON lines, by section."""
    env = {**os.environ, "DEVICE": device, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(SCRIPT), "--out", str(out), *options]
    done = subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    by_section: dict[str, list[dict]] = defaultdict(list)
    for line in (out / "gpu_check.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        by_section[record["section"]].append(record)
    return done, by_section


def recipe_kinds() -> dict[str, str]:
    """Each shipped recipe's data set, by file stem."""
    return {p.stem: yaml.safe_load(p.read_text())["data"]["dataset"]["name"] for p in (REPO / "recipes").glob("*.yaml")}


@pytest.mark.slow
def test_every_section_runs_on_the_cpu_and_every_number_is_sane(tmp_path):
    done, sections = run_check(tmp_path)
    failed = [r for records in sections.values() for r in records if not r["ok"]]
    assert failed == [], done.stderr[-4000:]
    assert done.returncode == 0
    assert set(sections) == SECTIONS
    assert sections["run"][0]["item"] == "end"  # it got to the end, within its budgets

    versions = sections["environment"][0]
    assert versions["packages"]["torch"]["version"] and versions["packages"]["kornia"]["version"]
    assert versions["packages"]["clrun"]["from"].startswith(str(REPO / "core"))  # this working tree's cl-run

    smoked = {r["recipe"]: r for r in sections["smoke"]}
    for name, dataset in recipe_kinds().items():
        if dataset in ("clrun/image_folder", "clrun/fashion_mnist"):
            assert name in smoked, f"{name} was not smoke-tested"
    for record in smoked.values():
        assert math.isfinite(record["loss"]) and record["steps"] >= 1
        for key in ("knn_top1", "linear_top1", "online_top1"):
            assert 0.0 <= record["evaluation"][key] <= 1.0, (record["recipe"], key)

    for record in sections["syncs"]:
        per_step = record["syncs_per_step"]
        assert len(per_step) == len(record["audited_steps"]) >= 1
        assert all(isinstance(n, int) and n >= 0 for n in per_step)
        assert sum(record["by_site"].values()) == sum(per_step)
        assert "HostSyncCounter" in record["method"]

    for record in sections["throughput"]:
        assert record["images_per_s"] > 0 and record["model_only_images_per_s"] > 0
        assert record["flops_per_step"] > 0 and record["flops_per_image"] * record["batch"] == record["flops_per_step"]
        assert record["pipeline_ratio"] > 0
        assert record["mfu"] is None and record["peak_memory_bytes"] is None  # no GPU peak or allocator on a CPU

    (compiled,) = sections["compile"]
    assert compiled["eager_images_per_s"] > 0 and compiled["compiled_images_per_s"] > 0
    graphs = compiled.get("unique_graphs")  # dynamo's private counters: None if a torch release moved them
    assert graphs is None or graphs >= 1

    (knn,) = sections["knn"]
    assert knn["agreement_fp32"] == 1.0  # the CPU against itself: the same search, the same answers
    assert knn["cpu_fp32_s"] > 0 and knn["accuracy_cpu"] > 0.5


@pytest.mark.slow
def test_the_gpu_runs_recipes_load_with_their_overrides(tmp_path):
    """What only a GPU machine trains, checked on any machine: the recipes load with the GPU scale's overrides."""
    done, sections = run_check(tmp_path, "--dry-run", device="cuda")
    assert [r for r in sections["plan"] if not r["ok"]] == [], done.stderr[-4000:]
    assert done.returncode == 0
    planned = {r["item"].split("/", 1)[0] for r in sections["plan"]}
    assert planned == {"smoke", "syncs", "throughput", "compile"}
    assert sections["environment"][0]["scale"] == "gpu"
