"""Sharded (FSDP2) against replicated (DDP) training on 2 processes: step time and memory per process.

    python bench/sharding.py                                    # CPU (gloo): about 3 minutes on 2 cores
    python bench/sharding.py --results bench/RESULTS.md
    python bench/sharding.py --device cuda --nproc 8 --backbone timm/vit_large_patch16_224 --results bench/RESULTS.md

Each strategy trains the quickstart recipe with ``--backbone`` under ``torchrun --nproc_per_node=NPROC`` for
``--warmup`` + ``--steps`` steps (a fresh torchrun each, strategies interleaved ``--repeats`` times). Each
process reports the median time of its timed steps, the bytes of parameters, gradients and optimizer state
it holds (its shards under FSDP, whole copies under DDP), and its peak memory (resident set on the CPU,
allocated on CUDA). The table shows rank 0's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, QUICKSTART, interleave, median, spread
from reporting import report, table

WORKER = Path(__file__).with_name("sharding_worker.py")


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="timm/resnet50")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", type=Path)
    return p.parse_args()


def one_run(args: argparse.Namespace, strategy: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "rank0.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(max((os.cpu_count() or 2) // args.nproc, 1))}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                   str(WORKER), str(out), str(args.warmup), str(args.steps), str(QUICKSTART),
                   f"train.strategy={strategy}", f"backbone.name={args.backbone}", f"data.batch_size={args.batch_size}",
                   f"train.device={args.device}", "train.channels_last=false", "data.dataset.subset=2048",
                   f"run.dir={scratch}"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"{strategy} failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


if __name__ == "__main__":
    args = options()
    results = interleave({"ddp": lambda: one_run(args, "ddp"), "fsdp": lambda: one_run(args, "fsdp")}, args.repeats)
    rows = [[name, median(runs, "step_s"), spread(runs, "step_s"), median(runs, "held_mb"), median(runs, "peak_mb")]
            for name, runs in results.items()]
    held = median(results["ddp"], "held_mb") / median(results["fsdp"], "held_mb")
    slower = median(results["fsdp"], "step_s") / median(results["ddp"], "step_s")
    report(args, "sharding", "Sharded (FSDP2) against replicated (DDP) training", [
        f"{args.backbone} in the quickstart recipe, global batch {args.batch_size}, {args.nproc} processes on "
        f"{args.device}; median step time of {args.steps} steps after {args.warmup}, median of {args.repeats} "
        f"interleaved run(s); rank 0's figures.", "",
        *table(["strategy", "step (s)", "range", "parameters + gradients + optimizer state (MB)",
                "peak memory (MB)"], rows), "",
        f"**FSDP holds {held:.2f}x less training state per process, at {slower:.2f}x DDP's step time.**"])
