"""cl-run against LightlySSL's reference SimCLR pipeline: images/s and peak memory, same data, model, batch, steps.

    python bench/vs_lightly.py                                  # CPU defaults: about 4 minutes on 2 cores
    python bench/vs_lightly.py --repeats 5 --results bench/RESULTS.md
    python bench/vs_lightly.py --device cuda --backbone resnet18 --batch-size 512 --warmup 20 --steps 150

Needs LightlySSL (an optional benchmark dependency; see bench/README.md). cl-run trains the recipe through
``clrun.train``; LightlySSL's side is its example pipeline set to the same recipe (``bench/lightly_ref.py``
lists what matches and what cannot). Every repetition of either side runs in a fresh Python process, so each
side's peak memory is its own: host memory is the peak PSS of that process and its DataLoader workers, CUDA
memory is ``torch.cuda.max_memory_allocated`` (see ``memory.PeakMemory``). Warm-up steps are at least as many as
lightly's workers, so the batches the workers prepare while starting up are used before the clock starts.
Target: cl-run >= 1.3x LightlySSL's images/s on the 2-core CPU machine, >= 2x on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os

from clrun_timed import CLRUN, train_clrun
from common import StepWindow, in_new_process, interleave, median, parser, settings, setup
from memory import PeakMemory
from reporting import describe, report, summary_table, verdict
from lightly_ref import require_lightly, train_lightly

LIGHTLY = "LightlySSL reference"
TARGETS = {"cpu": 1.3, "cuda": 2.0}
COLUMNS = [("host peak MB", "host_mb"), ("CUDA peak MB", "cuda_mb"), ("parameters", "parameters")]


def side(args: argparse.Namespace) -> None:
    """One repetition of one side, in this process; prints its measurements as a JSON line."""
    device = setup(args)
    window = StepWindow(args.warmup, args.steps, device)
    with PeakMemory(device) as memory:
        if args.side == "clrun":
            result = train_clrun(args, window)
        else:
            result = train_lightly(settings(args), device, args.precision, args.lightly_workers, window)
    print(json.dumps({**result, "host_mb": memory.host_mb, "cuda_mb": memory.cuda_mb}), flush=True)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--lightly-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader worker processes on LightlySSL's side (its example uses 8)")
    p.add_argument("--side", choices=("clrun", "lightly"), help=argparse.SUPPRESS)  # one repetition, internal
    args = p.parse_args()
    args.warmup = max(args.warmup, args.lightly_workers + 1)  # here and in every side's process
    if args.side:
        return side(args)
    version = require_lightly()
    device = setup(args)
    cfg = settings(args)
    results = interleave({CLRUN: lambda: in_new_process("--side", "clrun"),
                          LIGHTLY: lambda: in_new_process("--side", "lightly")}, args.repeats)
    speedup = median(results[CLRUN], "images_per_s") / median(results[LIGHTLY], "images_per_s")
    target = TARGETS[device.type]
    report(args, "vs_lightly", f"cl-run against LightlySSL {version}'s reference SimCLR pipeline", [
        describe(args, cfg) + f" LightlySSL: {args.lightly_workers} DataLoader workers; cl-run: the recipe's "
        f"{cfg['data']['num_workers']}. Each run in its own process.", "",
        *summary_table(results, COLUMNS), "",
        verdict("cl-run / LightlySSL images/s", f"{speedup:.2f}x", f">= {target}x on {device.type}", speedup >= target),
    ])


if __name__ == "__main__":
    main()
