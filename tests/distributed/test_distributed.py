"""Distributed training on the CPU: two processes under torchrun with the gloo backend.

For every loss, DDP's gradients with different data on each rank must equal a single process's
gradients on the concatenated batch, and the averaged loss must equal its loss (tests/helpers/ddp_worker.py
computes both in each rank). A 2-process run of the quickstart recipe must write one run folder, and one
whose worker is killed mid-epoch under ``--max-restarts=1`` must end with the uninterrupted run's weights.
Two processes train from tar shards and from a Parquet stream; FSDP2 trains as DDP does (the token
methods too: their backbone's ``forward_tokens`` bypasses ``forward``), and its checkpoints load on another
number of processes.

Every test that launches torchrun is marked slow: each launch starts two Python processes that import
torch, and the launches take a minute and a half of the default run's CPU time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "helpers" / "ddp_worker.py"
ELASTIC_WORKER = ROOT / "tests" / "helpers" / "elastic_worker.py"
# Loaded by path: pytest runs with --import-mode=importlib, so the tests folder is not on sys.path.
_spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_worker)
CASES, STEPS, BROKEN = [*_worker.CASES, *_worker.TOKEN_CASES], _worker.STEPS, _worker.BROKEN
TOKEN_CASES = list(_worker.TOKEN_CASES)


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` (a free port), one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun(str(WORKER), str(out))
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def assert_same_gradients(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys() and expected
    # One scale for the whole network: a parameter whose gradient is ~0 in exact arithmetic (a bias
    # that a standardizing loss cancels) must not turn rounding noise into a large relative error.
    scale = max(g.abs().max().item() for g in expected.values())
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=2e-6 * scale, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(CASES))
def test_ddp_gradients_equal_single_process_gradients_on_the_concatenated_batch(results, loss):
    single = results[0][loss]["single"]
    for rank in (0, 1):
        assert_same_gradients(results[rank][loss]["ddp"]["grads"], single["grads"])


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(CASES))
def test_ddp_loss_averaged_over_ranks_equals_the_single_process_loss(results, loss):
    single = results[0][loss]["single"]["losses"]
    assert len(single) == STEPS
    for rank in (0, 1):
        assert results[rank][loss]["ddp"]["losses"] == pytest.approx(single, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(CASES))
def test_loss_state_after_several_steps_is_the_same_on_both_ranks_and_as_in_one_process(results, loss):
    single = results[0][loss]["single"]["loss_state"]
    for rank in (0, 1):
        state = results[rank][loss]["ddp"]["loss_state"]
        assert state.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_moco_queue_is_identical_on_both_ranks_after_several_steps(results):
    a, b = (results[r]["clrun/moco"]["ddp"]["loss_state"] for r in (0, 1))
    assert torch.equal(a["queue"], b["queue"]) and torch.equal(a["queue_ptr"], b["queue_ptr"])
    # Every step enqueued the keys of both ranks: 2 views x 8 images x STEPS steps in a 40-row ring.
    assert int(a["queue_ptr"]) == (2 * 8 * STEPS) % 40


@pytest.mark.slow
def test_nnclr_support_queue_gathers_every_ranks_projections(results):
    a, b = (results[r]["clrun/nnclr"]["ddp"]["loss_state"] for r in (0, 1))
    assert torch.equal(a["queue"], b["queue"]) and torch.equal(a["queue_ptr"], b["queue_ptr"])
    # Each step enqueued the first view of all 8 images (both ranks' 4): 8 x STEPS rows in a 20-row ring.
    assert int(a["queue_ptr"]) == (8 * STEPS) % 20


@pytest.mark.slow
def test_the_gradient_comparison_catches_a_cross_rank_average_without_its_backward_pass(results):
    """LightlySSL's SIGReg bug (#1923): the right loss value, but each rank back-propagates through its
    own share of the averaged characteristic function only. The SIGReg part of every gradient is then
    halved on 2 ranks, which the comparison above must see (and does not see in the loss values)."""
    single, broken = results[0][BROKEN]["single"], results[0][BROKEN]["ddp"]
    assert broken["losses"][0] == pytest.approx(single["losses"][0], rel=1e-5)
    with pytest.raises(AssertionError):
        assert_same_gradients(broken["grads"], single["grads"])


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(TOKEN_CASES))
def test_fsdp_trains_the_token_methods_as_ddp_does(results, loss):
    """Sharded, the token methods call the backbone's ``forward_tokens`` (online and target) and the token
    head: FSDP2 must gather their weights for it as for ``forward``, and its reduce-scattered gradients
    are DDP's averaged ones. (Unregistered, ``forward_tokens`` met sharded weights: "got mixed
    torch.Tensor and DTensor".)"""
    for rank in (0, 1):
        ddp, fsdp = results[rank][loss]["ddp"], results[rank][loss]["fsdp"]
        assert_same_gradients(fsdp["grads"], ddp["grads"])
        assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-5)
        # The whole weights after STEPS steps, online and target.
        assert fsdp["weights"].keys() == ddp["weights"].keys()
        for key, value in ddp["weights"].items():
            torch.testing.assert_close(fsdp["weights"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_sharding_gathers_weights_for_forward_tokens_and_for_the_methods_a_module_declares():
    from torch import nn

    from clrun.training.parallel.sharding import forward_methods

    assert forward_methods(_worker.token_network("clrun/mae").backbone) == ["forward_tokens"]  # clrun.tokens' contract
    assert forward_methods(nn.Linear(2, 2)) == []

    class Head(nn.Linear):
        forward_methods = ("predict", "forward")  # forward needs no registering

        def predict(self, x):
            return self(x)

    assert forward_methods(Head(2, 2)) == ["predict"]
    misspelled = Head(2, 2)
    misspelled.forward_methods = ("predcit",)
    with pytest.raises(TypeError, match="predcit"):
        forward_methods(misspelled)


def quickstart_args(run_dir: Path, *extra: str) -> list[str]:
    return [
        "-m", "clrun", "recipes/quickstart.yaml", "data.dataset.subset=1024", "data.batch_size=64",
        "train.epochs=2", "train.max_steps=12", "train.progress=false", "health.samples=128",
        "callbacks=[]", f"run.dir={run_dir}", *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("data.batch_size=63", "data.batch_size: 63 does not split evenly over 2 processes; use a multiple of 2 (the "
                           "batch size is the global batch, each process takes batch_size / 2 images)"),
    ("train.sync_batchnorm=true", "train.sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only, and this "
                                  "run trains on the CPU (gloo); set train.sync_batchnorm=false here"),
])
def test_settings_a_distributed_cpu_run_cannot_have_are_clear_errors(tmp_path, override, message):
    done = torchrun(*quickstart_args(tmp_path, override))
    assert done.returncode != 0
    assert message in done.stderr
    assert not any(tmp_path.iterdir())  # stopped before the run folder was made


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_under_max_restarts_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    # 384 images in global batches of 64 (32 per rank): 6 steps an epoch, 12 in all; step checkpoints at 2
    # and 4 in epoch 1.
    common = ["train.max_steps=null", "data.dataset.subset=384", "train.checkpoint_every_steps=2"]
    straight = torchrun(*quickstart_args(tmp_path / "a", *common))
    assert straight.returncode == 0, straight.stderr[-4000:]
    # The uninterrupted run: one run folder, written by rank 0 alone, with both ranks' random streams.
    run = tmp_path / "a" / "quickstart"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["quickstart"]
    for name in ("recipe.yaml", "metrics.jsonl", "health.jsonl", "checkpoint.pt", "encoder.safetensors", "report.md"):
        assert (run / name).is_file(), name
    assert straight.stdout.count("run folder:") == 1
    assert straight.stdout.count("cl-run: training recipes/quickstart.yaml on cpu x 2 processes") == 1
    assert len(torch.load(run / "checkpoint.pt", weights_only=True)["rng_ranks"]) == 2

    # Rank 1 dies as step 5 begins; torchrun stops rank 0 and starts both again, and they resume by
    # themselves (train.auto_resume's default under torchrun) from the last step checkpoint.
    args = quickstart_args(tmp_path / "b", *common)[2:]
    elastic = torchrun("--max-restarts=1", str(ELASTIC_WORKER), "5", *args)
    assert elastic.returncode == 0, elastic.stderr[-4000:]
    folder = tmp_path / "b" / "quickstart"
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["quickstart"]
    assert f"cl-run: restarted by torchrun (restart 1): resuming {folder / 'checkpoint.pt'}" in elastic.stdout
    a, b = (torch.load(tmp_path / x / "quickstart" / "checkpoint.pt", weights_only=True) for x in ("a", "b"))
    assert a["step"] == b["step"] == 12
    for key, value in a["network"].items():
        assert torch.equal(value, b["network"][key]), key
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == list(range(1, 13))  # the steps after the checkpoint were logged once, by the restart


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["webdataset", "hf_dataset"])
def test_two_processes_train_from_tar_shards_and_from_a_local_hugging_face_data_set(tmp_path, kind):
    from PIL import Image

    from clrun.commands.shards import write_shards

    rng = np.random.default_rng(0)
    for i in range(64):
        folder = tmp_path / "images" / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    if kind == "webdataset":
        write_shards(tmp_path / "images", tmp_path / "data", shard_size=8)  # 8 shards, 2 per reader
        dataset = f"{{name: clrun/webdataset, urls: {tmp_path / 'data'}, size: 32}}"
    else:
        import datasets

        files = sorted((tmp_path / "images").rglob("*.png"))
        table = datasets.Dataset.from_dict({"image": [str(f) for f in files]}).cast_column("image", datasets.Image())
        for k in range(4):
            table.shard(4, k).to_parquet(str(tmp_path / "data" / f"part-{k}.parquet"))
        dataset = f"{{name: clrun/hf_dataset, path: {tmp_path / 'data'}, size: 32, streaming: true, label_column: null}}"
    # 2 processes x 2 loader workers read 64 images in global batches of 16: 4 steps an epoch. (One epoch:
    # datasets sleeps 5 s in every reader at the end of each, apache/arrow#45214.)
    done = torchrun("-m", "clrun", "tests/recipes/tiny.yaml", f"data.dataset={dataset}", "data.batch_size=16",
                    "data.num_workers=2", "train.epochs=1", "health.enabled=false", f"run.dir={tmp_path / 'runs'}")
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]
    assert all(0 <= r["data_wait"] <= 1 for r in records if r["kind"] == "epoch")


def assert_state_equal(got: dict, saved: dict) -> None:
    """A network's tensors and an optimizer's moments (keyed by parameter name), bit for bit."""
    assert got["network"].keys() == saved["network"].keys()
    for key, value in saved["network"].items():
        assert torch.equal(got["network"][key], value), key
    moments = saved["optimizer"]["state"]
    assert got["optimizer"]["state"].keys() == moments.keys() and moments
    for name, state in moments.items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(got["optimizer"]["state"][name][key]), torch.as_tensor(value)), (name, key)


@pytest.mark.slow
def test_fsdp_trains_as_ddp_does_and_its_checkpoints_load_on_another_number_of_processes(tmp_path):
    from safetensors.torch import load_file

    import clrun
    from clrun.training import checkpointing
    from clrun.training.checkpointing.state import trained
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    # BYOL's parts on the tiny recipe: a predictor and an EMA target network, sharded like the online one.
    tiny = ["tests/recipes/tiny.yaml", "train.epochs=2", "health.enabled=false", "target={momentum: 0.9}",
            "predictor={name: clrun/mlp, hidden_dim: 32, out_dim: 32}", "loss={name: clrun/byol}"]
    fsdp = [*tiny, "train.strategy=fsdp"]
    sharded = torchrun("-m", "clrun", *fsdp, f"run.dir={tmp_path / 'fsdp'}")
    replicated = torchrun("-m", "clrun", *tiny, f"run.dir={tmp_path / 'ddp'}")
    assert sharded.returncode == 0 and replicated.returncode == 0, sharded.stderr[-3000:] + replicated.stderr[-3000:]
    # One checkpoint folder per process's shards, and a pointer to the complete one.
    folder = tmp_path / "fsdp" / "tiny"
    saved = checkpointing.find(folder)
    assert saved.parent == folder / "checkpoint.dcp" and sorted(p.name for p in saved.iterdir()) == [".metadata",
        "__0_0.distcp", "__1_0.distcp", "rest.pt"]
    whole = checkpointing.load(saved)  # gathered into one process, as cl-run eval and export read it
    # The same training: FSDP2's reduce-scatter gives each process DDP's averaged gradients for its shard,
    # and the target follows. (BatchNorm statistics are per process: both checkpoints keep rank 0's.)
    replicated_state = checkpointing.load(checkpointing.find(tmp_path / "ddp" / "tiny"))
    for part in ("network", "target"):
        assert whole[part].keys() == replicated_state[part].keys()
        for key, value in replicated_state[part].items():
            torch.testing.assert_close(whole[part][key], value, rtol=1e-5, atol=1e-6, msg=f"{part}.{key}")
    a, b = (load_file(tmp_path / x / "tiny" / "encoder.safetensors") for x in ("fsdp", "ddp"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)

    # 2 -> 1: resumed on one process (nothing left to train), the run holds every saved tensor.
    one = clrun.train(clrun.load_recipe(fsdp[0], [*fsdp[1:], f"run.dir={tmp_path / 'fsdp'}"]), resume=folder)
    loaded = {"network": one.parts.network.state_dict(),
              "optimizer": get_optimizer_state_dict(trained(one.parts), one.parts.optimizer)}
    assert one.step == whole["step"] == 8
    assert_state_equal(loaded, whole)

    # 1 -> 2: a sharded recipe trained on one process resumes on two, each loading its half.
    single = clrun.train(clrun.load_recipe(fsdp[0], [*fsdp[1:], f"run.dir={tmp_path / 'one'}"]))
    out = tmp_path / "loaded.pt"
    done = torchrun(str(ROOT / "tests" / "helpers" / "sharded_worker.py"), str(single.directory), str(out), *fsdp,
                    f"run.dir={tmp_path / 'one'}")
    assert done.returncode == 0, done.stderr[-4000:]
    loaded = torch.load(out, weights_only=True)
    assert loaded["processes"] == 2 and loaded["step"] == single.step
    assert_state_equal(loaded, checkpointing.load(checkpointing.find(single.directory)))


def test_a_copy_without_sync_batchnorm_computes_what_the_plain_batchnorm_network_does():
    from torch import nn

    from clrun import distributed

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8))
    plain[1].running_mean.fill_(0.5)  # statistics must be carried over, not reset
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy_of(plain))
    local = distributed.without_sync_batchnorm(synced)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in local.modules())
    assert sum(isinstance(m, distributed.LocalBatchNorm) for m in local.modules()) == 2
    x = torch.randn(5, 1, 8, 8)
    for mode in (True, False):
        plain.train(mode), local.train(mode)
        torch.testing.assert_close(local(x), plain(x), rtol=0, atol=0)


def copy_of(module):
    import copy

    return copy.deepcopy(module)


@pytest.mark.slow
def test_a_process_that_fails_is_one_cl_run_line_naming_it_and_the_strategy_and_the_other_says_nothing(tmp_path):
    """One unreadable image among 64: the process whose share of a batch holds it fails (a data error naming the
    data set and the file), the other one, waiting for it in a collective, is stopped by torchrun without a
    word, and torchrun's summary names the failing process as the root cause."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(63):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(images / f"img{i:03d}.png")
    bad = images / "img031_bad.png"
    bad.write_bytes(b"not an image")
    done = torchrun("-m", "clrun", "tests/recipes/tiny.yaml", f"data.dataset={{name: clrun/image_folder, root: {images}, "
                    "size: 32}", "health.enabled=false", f"run.dir={tmp_path / 'runs'}")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "cl-run" in line]
    assert len(lines) == 1, done.stderr[-4000:]
    rank = lines[0].removeprefix("cl-run: rank ")[0]
    assert lines[0] == (
        f"cl-run: rank {rank} of 2 (train.strategy=ddp): error: clrun/image_folder: cannot read image {bad} "
        f"(UnidentifiedImageError: cannot identify image file '{bad}'); remove or replace it, or set on_error: skip "
        f"on this data set to skip unreadable images and count them")
    # No process's traceback: the one traceback is torchrun's own (its ChildFailedError, then its summary).
    assert done.stderr.count("Traceback (most recent call last)") == 1 and "ChildFailedError" in done.stderr
    assert "[rank0]" not in done.stderr and "[rank1]" not in done.stderr and "terminate called" not in done.stderr
    failures, root_cause = done.stderr.split("Root Cause (first observed failure):")
    assert f"rank      : {rank} (local_rank: {rank})" in root_cause and "exitcode  : 2 " in root_cause
    assert f"rank      : {1 - int(rank)} (local_rank: {1 - int(rank)})" in failures
