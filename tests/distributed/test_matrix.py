"""Every shipped method under every strategy: each ``*_fmnist`` recipe and the quickstart's SimCLR (16
methods, and iBOT with DINOv3's Gram term), made tiny, trained two steps by two gloo processes under ``train.strategy: ddp`` and under
``train.strategy: fsdp``, through cl-run's own setup and training step, must give the gradients, the weights
and the loss's state of one process computing each rank's share as its own BatchNorm batch
(tests/helpers/matrix_worker.py says how). One torchrun launch per strategy loops over the recipes in-process:
two process start-ups in all.

Under FSDP the launch also trains iBOT with ``train.fsdp_param_dtype: bf16``: the gathered weights and the
activations must be bf16 inside forward, BatchNorm's weights fp32, the shards, gradients and optimizer state
fp32, and the gradients close to fp32's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock  # torch's own dependency

# Two torchrun launches (each two processes that import torch): slow, as tests/distributed/test_distributed.py's.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "helpers" / "matrix_worker.py"
# Loaded by path: pytest runs with --import-mode=importlib, so the tests folder is not on sys.path.
_spec = importlib.util.spec_from_file_location("matrix_worker", WORKER)
_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_worker)
METHODS = sorted(_worker.CASES)

def launch(tmp_path_factory, strategy: str) -> list[dict]:
    """The launch for ``strategy``, made once per test run: pytest-xdist's workers share the run's temporary root,
    and the first to ask launches under a file lock while another waits for its results (a module fixture
    is built once per worker, and this file's tests are handed out one by one)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's own folder either way
    out = root / f"matrix-{strategy}"
    with FileLock(str(out) + ".lock"):
        if not out.exists():
            out.mkdir()
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
                   str(out), strategy]
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode:
                (out / "failed.txt").write_text(done.stderr[-4000:])
    failed = out / "failed.txt"
    assert not failed.exists(), failed.read_text()
    return [json.loads((out / f"rank{rank}.json").read_text())["results"] for rank in (0, 1)]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> list[dict]:
    return launch(tmp_path_factory, "ddp")


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory) -> list[dict]:
    return launch(tmp_path_factory, "fsdp")


def assert_matches(results: list[dict], method: str, strategy: str) -> None:
    for rank, by_case in enumerate(results):
        case = by_case[method]
        where = f"{method} under {strategy}, rank {rank}"
        assert not case["error"], f"{where} raised:\n{case['error']}"
        assert case["placed"] == strategy, f"{where}: the parts were placed {case['placed']}, not {strategy}"
        assert not case["problems"], f"{where}: {case['problems']}"
        assert case["tensors"] > 0, f"{where}: nothing was compared"
        assert case["ratio"] <= 1.0, (
            f"{where}: {case['worst']} differs from one process's by {case['max_abs']:.3g} ({case['ratio']:.3g} x the "
            f"tolerance); per group: {json.dumps(case['groups'], indent=1)}")


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_under_ddp_as_one_process(ddp, method):
    assert_matches(ddp, method, "ddp")


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_under_fsdp_as_one_process(fsdp, method):
    assert_matches(fsdp, method, "fsdp")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("case", sorted(_worker.SPLIT_CASES))
def test_a_batch_in_parts_trains_as_one_process_with_those_parts_as_batchnorm_batches(ddp, fsdp, strategy, case):
    assert_matches(ddp if strategy == "ddp" else fsdp, case, strategy)


def test_sixteen_methods_and_the_gram_term():
    assert len(METHODS) == 17 and "ibot + gram" in METHODS


def test_the_comparison_sees_batchnorm_statistics_of_the_whole_batch(ddp):
    """The control: SimCLR's DDP run against a reference whose BatchNorm saw the whole batch at once (as
    SyncBatchNorm would) must be out of tolerance, so per-rank statistics are what the matrix checks."""
    for by_case in ddp:
        control = by_case[_worker.CONTROL]
        assert not control["error"] and control["tensors"] > 0
        assert control["ratio"] > 100, control


def test_fsdp_bf16_parameters_compute_in_bf16_and_keep_fp32_state(fsdp):
    for by_case in fsdp:
        case = by_case[_worker.BF16]
        assert not case.get("error"), case.get("error")
        seen = case["seen"]
        assert seen["block qkv weight"] == seen["block qkv input"] == "torch.bfloat16", seen
        assert seen["patch_embed weight"] == seen["patch_embed input"] == "torch.bfloat16", seen
        # BatchNorm keeps fp32 weights (its statistics are fp32 buffers) and takes the bf16 activations.
        assert seen["projector BatchNorm weight"] == "torch.float32", seen
        assert seen["projector BatchNorm input"] == "torch.bfloat16", seen
        assert case["shards"] == case["grads"] == case["optimizer_state"] == ["torch.float32"], case
        assert not case["missing_grads"]
        assert case["grad_cosine"] > 0.98, case  # bf16 rounding, not another computation
        assert case["losses"][0] == pytest.approx(case["reference_losses"][0], rel=1e-2)
