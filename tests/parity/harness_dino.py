"""cl-run's DINO against the official trajectory (``fixtures/dino_official.json``): one run, every quantity.

A command line over ``clrun_side`` (the tests are ``test_dino_parity.py``), for looking at a difference: it
runs cl-run's training loop on the parity recipe (``clrun_side.RECIPE``), compares every recorded quantity
with the fixture per step and prints the first step over the tolerance, the largest deviations and where.
Exit status 0 when everything matches.

    .venv/bin/python tests/parity/harness_dino.py                                  # global_only
    .venv/bin/python tests/parity/harness_dino.py --run multicrop -v               # official resampling, all rows
    .venv/bin/python tests/parity/harness_dino.py --run multicrop --timm-resample  # the deliberate difference
    .venv/bin/python tests/parity/harness_dino.py --reintroduce ema_weight_float32 # a fixed difference, back
    .venv/bin/python tests/parity/harness_dino.py --override train.grad_clip_mode=global_norm --stop-after 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.parity import clrun_side as C  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", choices=("global_only", "multicrop"), default="global_only")
    parser.add_argument("--timm-resample", action="store_true",
                        help="multicrop with timm's position-embedding resampling (cl-run's) instead of the official")
    parser.add_argument("--reintroduce", action="append", default=[], choices=list(C.DIFFERENCES),
                        help="; ".join(f"{k}: {v.what}" for k, v in C.DIFFERENCES.items()))
    C.harness_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    differences = [C.DIFFERENCES[name] for name in args.reintroduce]
    overrides = [o for d in differences for o in d.base + d.overrides] + args.override
    patches = [p for d in differences for p in d.patches]
    started = time.perf_counter()
    result = C.run_clrun(args.run, resample=args.run == "multicrop" and not args.timm_resample, overrides=overrides,
                         patches=patches, stop_after=args.stop_after, data_root=args.data_root, keep=args.keep)
    recorder = result.recorder
    rows = C.compare(C.load_fixture()["runs"][args.run], recorder)
    print(f"== {args.run}; {'timm' if args.run == 'multicrop' and args.timm_resample else 'official'} resampling; "
          f"reintroduced: {', '.join(args.reintroduce) or 'none'}; overrides: {', '.join(args.override) or 'none'}; "
          f"{recorder.recorded_steps()} steps in {result.train_seconds:.1f} s; dtypes {recorder.dtypes}")
    step = C.verdict(rows, args.verbose, started)
    if args.json:
        args.json.write_text(json.dumps({"steps": recorder.steps, "checksums": recorder.checksums,
                                         "param_groups": recorder.param_groups}, indent=1, default=str))
    return 0 if step is None else 1


if __name__ == "__main__":
    sys.exit(main())
