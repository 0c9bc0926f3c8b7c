"""The checkpointing package: the training state is declared once and both storages (one file, sharded)
save exactly its parts, fp16's GradScaler included; only the checkpointer imports a storage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import clrun
from clrun.run_folder import RunFolder
from clrun.training import checkpointing
from clrun.training.checkpointing import Checkpointer, TrainState
from clrun.training.run import Run
from clrun.training.setup import prepare

REPO = Path(__file__).resolve().parents[4]
TINY = REPO / "tests" / "recipes" / "tiny.yaml"
STORAGES = {"clrun.training.checkpointing.one_file", "clrun.training.checkpointing.sharded"}
CHECKPOINTER = REPO / "core" / "training" / "checkpointing" / "checkpointer.py"

pytestmark = pytest.mark.usefixtures("no_report")  # the report is not under test here: skip its plots


def imported_names(file: Path) -> set[str]:
    """Every module name ``file`` imports, anywhere in it (``from a import b`` counts ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_checkpointer_imports_a_storage():
    sources = [f for folder in ("core", "plugins", "bench", "tests", "examples") for f in (REPO / folder).rglob("*.py")]
    assert len(sources) > 100  # it did read the tree
    importers = {f for f in sources if imported_names(f) & STORAGES}
    assert importers == {CHECKPOINTER}, sorted(str(f.relative_to(REPO)) for f in importers)


def fp16_run(folder: Path, strategy: str) -> Run:
    """The tiny recipe in fp16, built on the CPU and unsharded (no process group: a sharded recipe's parts
    are plain here, its checkpoints still go through DCP), with a run folder to checkpoint into."""
    recipe = clrun.load_recipe(TINY, ["train.precision=fp16", f"train.strategy={strategy}", f"run.dir={folder}"])
    setup = prepare(recipe, "eval", torch.device("cpu"))
    return Run(recipe, setup.parts, setup.device, RunFolder.create(folder, "r"), steps_per_epoch=4)


def scaled_steps(run: Run) -> None:
    """Two fp16 optimizer steps through the run's GradScaler: one whose gradients overflow (the step is
    skipped and the scale backs off), one that goes through (the growth tracker counts it)."""
    scaler, optimizer = run.parts.scaler, run.parts.optimizer
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    for grow in (float("inf"), 1.0):
        optimizer.zero_grad()
        scaler.scale(sum((p * grow).sum() for p in trained)).backward()
        scaler.step(optimizer)
        scaler.update()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_fp16_scaler_round_trips_through_both_storages(strategy, tmp_path):
    saved_run = fp16_run(tmp_path / "a", strategy)
    assert saved_run.parts.scaler.is_enabled()
    fresh = saved_run.parts.scaler.state_dict()
    scaled_steps(saved_run)
    scaled = saved_run.parts.scaler.state_dict()
    assert scaled["scale"] == fresh["scale"] / 2 and scaled["_growth_tracker"] == 1
    assert Checkpointer(saved_run).save()
    path = checkpointing.find(saved_run.directory)
    assert path.is_dir() == (strategy == "fsdp")  # a sharded checkpoint is a folder of DCP shards

    resumed = fp16_run(tmp_path / "b", strategy)
    assert resumed.parts.scaler.state_dict() == fresh
    Checkpointer(resumed).restore(path)
    assert resumed.parts.scaler.state_dict() == scaled


def test_a_checkpoint_written_before_the_scaler_was_saved_loads_with_a_fresh_one(tmp_path):
    saved_run = fp16_run(tmp_path / "a", "ddp")
    scaled_steps(saved_run)
    Checkpointer(saved_run).save()
    old = checkpointing.load(saved_run.folder.checkpoint)
    del old["scaler"]  # as cl-run 0.1.0 wrote it
    torch.save(old, saved_run.folder.checkpoint)
    resumed = fp16_run(tmp_path / "b", "ddp")
    fresh = resumed.parts.scaler.state_dict()
    Checkpointer(resumed).restore(saved_run.folder.checkpoint)
    assert resumed.parts.scaler.state_dict() == fresh and resumed.step == saved_run.step


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_each_storage_writes_the_declared_entries_once(strategy, tmp_path):
    run = fp16_run(tmp_path, strategy)
    state = TrainState(run)
    declared = {"format"} | {key for part in state.parts for key in part.keys}
    assert sum(len(part.keys) for part in state.parts) + 1 == len(declared)  # no entry has two owners
    Checkpointer(run).save()
    path = checkpointing.find(run.directory)
    if strategy == "ddp":
        assert set(torch.load(path, weights_only=True)) == declared
        return
    import torch.distributed.checkpoint as dcp

    sharded = {key.split(".")[0] for key in dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata}
    rest = set(torch.load(path / "rest.pt", weights_only=True))
    # The tiny recipe has no target and its loss no state: those entries are absent from the shards.
    assert sharded == {"network", "optimizer"} and sharded <= state.tensor_keys
    assert rest == declared - state.tensor_keys


@pytest.mark.slow  # three short trainings in fp16
def test_an_fp16_run_resumed_continues_its_loss_scale(tmp_path, crash_after_first_checkpoint, assert_same_checkpoints):
    def recipe(name: str):
        return clrun.load_recipe(TINY, ["train.precision=fp16", "train.epochs=2", "health.enabled=false",
                                        f"run.dir={tmp_path}", f"run.name={name}"])

    interrupted = crash_after_first_checkpoint(recipe("interrupted"))
    first = checkpointing.load(RunFolder(interrupted).checkpoint)["scaler"]
    assert first["scale"] < 65536.0  # fp16 overflowed in the first epoch: the scale backed off
    resumed = clrun.train(recipe("interrupted"), resume=interrupted)
    straight = clrun.train(recipe("straight"))
    assert_same_checkpoints(resumed.directory, straight.directory)
    assert resumed.parts.scaler.state_dict() == straight.parts.scaler.state_dict()
