"""cl-run's MAE against the official trajectory (``fixtures/mae_official.json``): one run, every quantity.

A command line over ``mae_clrun_side`` (the tests are ``test_mae_parity.py``), for looking at a difference: it
runs cl-run's training loop on the MAE parity recipe (``mae_clrun_side.RECIPE``), compares every recorded
quantity with the fixture per step and prints the first step over the tolerance, the largest deviations and
where. Exit status 0 when everything matches.

    .venv/bin/python tests/parity/harness_mae.py                                   # the parity recipe
    .venv/bin/python tests/parity/harness_mae.py -v                                # every quantity
    .venv/bin/python tests/parity/harness_mae.py --reintroduce pos_embed_trained   # a difference put back
    .venv/bin/python tests/parity/harness_mae.py --official-order                  # kept patches in noise order
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
from tests.parity import mae_clrun_side as M  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reintroduce", action="append", default=[], choices=list(M.DIFFERENCES),
                        help="; ".join(f"{k}: {v.what}" for k, v in M.DIFFERENCES.items()))
    parser.add_argument("--official-order", action="store_true",
                        help="the encoder's kept patches in the official (noise) order instead of raster order")
    C.harness_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    differences = [M.DIFFERENCES[name] for name in args.reintroduce]
    overrides = [o for d in differences for o in d.base + d.overrides] + args.override
    patches = [p for d in differences for p in d.patches] + ([M.official_keep_order] if args.official_order else [])
    started = time.perf_counter()
    result = M.run_clrun(overrides=overrides, patches=patches, stop_after=args.stop_after, data_root=args.data_root,
                         keep=args.keep)
    recorder = result.recorder
    rows = M.compare(M.load_fixture(), recorder)
    print(f"== MAE; reintroduced: {', '.join(args.reintroduce) or 'none'}; "
          f"official order: {args.official_order}; overrides: {', '.join(args.override) or 'none'}; "
          f"{recorder.recorded_steps()} steps in {result.train_seconds:.1f} s; dtypes {recorder.dtypes}")
    step = C.verdict(rows, args.verbose, started)
    if args.json:
        steps = [{k: v for k, v in s.items() if not isinstance(v, torch.Tensor)} for s in recorder.steps]
        args.json.write_text(json.dumps({"steps": steps, "checksums": recorder.checksums,
                                         "param_groups": recorder.group_names}, indent=1, default=str))
    return 0 if step is None else 1


if __name__ == "__main__":
    sys.exit(main())
