"""``EvaluationWait``: in a distributed run the other processes wait for rank 0's evaluators at a barrier
whose timeout the recipe sets, and a timeout there says what was waited for. Two gloo processes, one
launch: a barrier that waits as long as rank 0 evaluates, then one whose timeout is shorter than that."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clrun.training.evaluation_wait import EvaluationWait

WORKER = r"""
import datetime, json, os, sys, time
import torch.distributed as dist
from clrun.training.evaluation_wait import EvaluationTimeout, EvaluationWait

rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
patient = EvaluationWait(datetime.timedelta(seconds=30))
hasty = EvaluationWait(datetime.timedelta(seconds=0.5))
result = {}
if rank == 0:
    time.sleep(0.6)  # evaluating
start = time.monotonic()
patient.wait("epoch 1's end")
result["waited"] = time.monotonic() - start
if rank == 0:
    time.sleep(1.5)  # evaluating for longer than the hasty barrier allows
try:
    hasty.wait("the run's end")
    result["hasty"] = "passed"
except EvaluationTimeout as exc:
    result["hasty"] = str(exc)
with open(out, "w") as f:
    json.dump(result, f)
os._exit(0)  # no teardown handshake with a process that may have left
"""


@pytest.mark.slow  # two processes with a process group
def test_the_other_processes_wait_for_rank_0_and_a_timeout_says_what_to_change(tmp_path):
    outs = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(r), str(tmp_path / "store"), str(outs[r])],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    rank0, rank1 = (json.loads(out.read_text()) for out in outs)
    assert rank1["waited"] >= 0.5  # it waited while rank 0 evaluated, and then went on
    assert rank1["hasty"].startswith(
        "process 1 waited more than 0.00833333 min at the run's end for rank 0, which runs the evaluators there "
        "(kNN, probes, fine-tuning); if the evaluation takes that long, raise train.evaluation_timeout_minutes, "
        "evaluate less often (the evaluator's every:) or on fewer images ("), rank1["hasty"]


def test_one_process_never_waits():
    import datetime

    wait = EvaluationWait(datetime.timedelta(seconds=0.001))
    assert wait.group is None
    wait.wait()  # returns at once: no process group
