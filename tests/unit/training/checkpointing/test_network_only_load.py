"""``cl-run eval`` and ``export`` of a sharded run (``train.strategy: fsdp``, DCP checkpoints) read the
network's tensors from the shards, not the optimizer's moments (twice the network's size with AdamW): the
same network as the whole checkpoint gathered into one process, the rest of the state (epoch, step,
callbacks) as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

import clrun
from clrun.evaluation import evaluate
from clrun.export import export
from clrun.recipe import resolved
from clrun.run_folder import RunFolder
from clrun.training import checkpointing
from clrun.training.checkpointing import Checkpointer
from clrun.training.run import Run
from clrun.training.setup import prepare

TINY = Path(__file__).resolve().parents[3] / "recipes" / "tiny.yaml"
pytestmark = pytest.mark.usefixtures("no_report")  # cl-run eval refreshes the report: not under test here
KNN = "[{name: clrun/knn, k: 5, train: {name: clrun/synthetic, num_images: 24}, test: {name: clrun/synthetic, num_images: 8, seed: 1}}]"


@pytest.fixture
def sharded_run(tmp_path) -> Run:
    """The tiny recipe, sharded (built unsharded on one process: its checkpoints still go through DCP), after
    one AdamW step (so that the optimizer has moments to leave unread) and its checkpoint."""
    recipe = clrun.load_recipe(TINY, ["train.strategy=fsdp", f"run.dir={tmp_path}", f"callbacks={KNN}",
                                      "health.enabled=false"])
    setup = prepare(recipe, "eval", torch.device("cpu"))
    run = Run(recipe, setup.parts, setup.device, RunFolder.create(tmp_path, "sharded"), steps_per_epoch=4)
    run.folder.write_recipe(resolved(recipe))
    params = [p for group in run.parts.optimizer.param_groups for p in group["params"]]
    sum(p.square().sum() for p in params).backward()
    run.parts.optimizer.step()
    run.step = 1
    assert Checkpointer(run).save()
    return run


def test_eval_and_export_read_only_the_networks_keys_from_the_shards(sharded_run, monkeypatch):
    saved = checkpointing.find(sharded_run.directory)
    assert saved.is_dir()  # a sharded checkpoint
    whole = checkpointing.load(saved, "eval")  # everything, gathered into this process
    read: list[str] = []
    read_data = FileSystemReader.read_data

    def recording(self, plan, planner):
        read.extend(item.storage_index.fqn for item in plan.items)
        return read_data(self, plan, planner)

    monkeypatch.setattr(FileSystemReader, "read_data", recording)
    network_only = checkpointing.load(saved, "eval", parts=("network",))
    assert read and all(key.startswith("network.") for key in read)  # no optimizer.state.* was read
    assert "optimizer" in whole and "optimizer" not in network_only
    assert network_only["network"].keys() == whole["network"].keys()
    for key, value in whole["network"].items():
        assert torch.equal(network_only["network"][key], value), key
    assert (network_only["epoch"], network_only["step"]) == (whole["epoch"], whole["step"]) == (0, 1)

    # Both commands go through it: the export is the checkpoint's backbone, eval evaluates its network.
    read.clear()
    encoder = load_file(export(sharded_run.directory))
    backbone = {k.removeprefix("backbone."): v for k, v in whole["network"].items() if k.startswith("backbone.")}
    assert encoder.keys() <= backbone.keys() and all(torch.equal(encoder[k], backbone[k]) for k in encoder)
    assert read and all(key.startswith("network.") for key in read)
    read.clear()
    assert set(evaluate(sharded_run.directory)) == {"knn_top1", "knn_top1_projector"}
    assert read and all(key.startswith("network.") for key in read)
