"""cl-run's iBOT against the official trajectory (``fixtures/ibot_official.json``): one run, every quantity.

A command line over ``ibot_clrun_side`` (the tests are ``test_ibot_parity.py``), for looking at a difference: it
runs cl-run's training loop on the parity recipe (``ibot_clrun_side.RECIPE``), compares every recorded quantity with
the fixture per step and prints the first step over the tolerance, the largest deviations and where. Exit status
0 when everything matches.

    .venv/bin/python tests/parity/ibot_harness.py -v                                  # every quantity
    .venv/bin/python tests/parity/ibot_harness.py --reintroduce mask_token_not_decayed
    .venv/bin/python tests/parity/ibot_harness.py --reintroduce shared_head_only      # against separate_head
    .venv/bin/python tests/parity/ibot_harness.py --override loss.lambda_patch=0.5 --stop-after 3
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
from tests.parity import ibot_clrun_side as I  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reintroduce", choices=list(I.DIFFERENCES),
                        help="; ".join(f"{k}: {v.what}" for k, v in I.DIFFERENCES.items()))
    C.harness_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    difference = I.DIFFERENCES[args.reintroduce] if args.reintroduce else None
    keywords = dict(difference.keywords) if difference else {}
    keywords["overrides"] = tuple(keywords.get("overrides", ())) + tuple(args.override)
    against = difference.against if difference else "multicrop"
    started = time.perf_counter()
    result = I.run_clrun(stop_after=args.stop_after, data_root=args.data_root, keep=args.keep, **keywords)
    recorder = result.recorder
    keys = None if against == "multicrop" else ("loss", "cls", "patch")
    rows = I.compare(I.load_fixture()["runs"][against], recorder, keys)
    print(f"== against {against}; reintroduced: {args.reintroduce or 'none'}; overrides: "
          f"{', '.join(args.override) or 'none'}; {recorder.recorded_steps()} steps in {result.train_seconds:.1f} s; "
          f"dtypes {recorder.dtypes}")
    step = C.verdict(rows, args.verbose, started)
    if args.json:
        steps = [{k: v for k, v in s.items() if k != "masks"} for s in recorder.steps]
        args.json.write_text(json.dumps({"steps": steps, "checksums": recorder.checksums,
                                         "param_groups": recorder.param_groups}, indent=1, default=str))
    return 0 if step is None else 1


if __name__ == "__main__":
    sys.exit(main())
