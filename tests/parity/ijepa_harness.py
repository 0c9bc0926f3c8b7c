"""cl-run's I-JEPA against the official trajectory (``fixtures/ijepa_official.json``): one run, every quantity.

A command line over ``ijepa_clrun_side`` (the tests are ``test_ijepa_parity.py``), for looking at a difference: it
runs cl-run's training loop on the parity recipe (``ijepa_clrun_side.RECIPE``), compares every recorded quantity
with the fixture per step and prints the first step over the tolerance, the largest deviations and where. Exit
status 0 when everything matches.

    .venv/bin/python tests/parity/ijepa_harness.py -v                                   # every quantity
    .venv/bin/python tests/parity/ijepa_harness.py --reintroduce cosine_target_momentum
    .venv/bin/python tests/parity/ijepa_harness.py --reintroduce lr_one_step_behind       # the default offset
    .venv/bin/python tests/parity/ijepa_harness.py --override loss.beta=0.5 --stop-after 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.parity import clrun_side as C  # noqa: E402
from tests.parity import ijepa_clrun_side as J  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reintroduce", choices=list(J.DIFFERENCES),
                        help="; ".join(f"{k}: {v.what}" for k, v in J.DIFFERENCES.items()))
    C.harness_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    difference = J.DIFFERENCES[args.reintroduce] if args.reintroduce else None
    keywords = difference.keywords() if difference else {"overrides": (), "patches": ()}
    keywords["overrides"] = tuple(keywords["overrides"]) + tuple(args.override)
    started = time.perf_counter()
    result = J.run_clrun(stop_after=args.stop_after, data_root=args.data_root, keep=args.keep, **keywords)
    recorder = result.recorder
    rows = J.compare(J.load_fixture(), recorder)
    print(f"== I-JEPA; reintroduced: {args.reintroduce or 'none'}; overrides: {', '.join(args.override) or 'none'}; "
          f"{recorder.recorded_steps()} steps in {result.train_seconds:.1f} s; dtypes {recorder.dtypes}")
    step = C.verdict(rows, args.verbose, started)
    if args.json:
        steps = [{k: v for k, v in s.items() if not isinstance(v, np.ndarray)} for s in recorder.steps]
        args.json.write_text(json.dumps({"steps": steps, "checksums": recorder.checksums,
                                         "param_groups": recorder.group_names}, indent=1, default=str))
    return 0 if step is None else 1


if __name__ == "__main__":
    sys.exit(main())
