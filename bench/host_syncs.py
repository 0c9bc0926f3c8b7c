"""Host synchronisations per training step of every CPU recipe, counted on the CPU (clrun.host_syncs): the
calls that would make a GPU wait for the host, by call site. The same count as the sync-budget test
(tests/integration/test_host_syncs.py), as a table: the syncs of a step that does not read the metrics, of
one that does (every train.log_every steps), and the sites.

    python bench/host_syncs.py                          # every *_fmnist recipe and the quickstart
    python bench/host_syncs.py --results bench/RESULTS.md
    python bench/host_syncs.py --recipes dino_fmnist mae_fmnist

About 2 s a recipe on the 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: the tests' per-step counter
from tests.helpers.host_syncs import count_host_syncs  # noqa: E402

from common import REPO  # noqa: E402
from reporting import report, table  # noqa: E402

LOG_EVERY, STEPS = 3, 7
TINY = ("data.batch_size=8", "data.dataset.subset=96", "data.num_workers=0", "health.enabled=false",
        "callbacks=[]", f"train.max_steps={STEPS}", f"train.log_every={LOG_EVERY}")


def row(stem: str) -> list:
    with tempfile.TemporaryDirectory() as runs:
        per_step = count_host_syncs(REPO / "recipes" / f"{stem}.yaml", Path(runs), *TINY)
    logging = [c for step, c in enumerate(per_step, start=2) if step % LOG_EVERY == 0]
    quiet = [c for step, c in enumerate(per_step, start=2) if step % LOG_EVERY != 0]
    sites = sum(per_step, Counter())
    shown = "; ".join(f"{site} x{n / len(per_step):.3g}" for site, n in sites.most_common()) or "-"
    return [stem, max(sum(c.values()) for c in quiet), max(sum(c.values()) for c in logging), shown]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", help="recipe names (default: quickstart and every *_fmnist)")
    parser.add_argument("--results", type=Path, help="also write the table into this RESULTS.md")
    args = parser.parse_args()
    args.device = "cpu"
    stems = args.recipes or ["quickstart", *sorted(p.stem for p in (REPO / "recipes").glob("*_fmnist.yaml"))]
    rows = [row(stem) for stem in stems]
    lines = [f"Each recipe {STEPS} steps of 8 images, callbacks off, train.log_every={LOG_EVERY}; steps 2 to "
             f"{STEPS - 1} counted (step 1 makes the lazy state, the epoch's end follows the last). Budget: 0 per step, "
             "1 (the metrics' read) on a step that logs.", "",
             *table(["recipe", "syncs, step without a read (max)", "syncs, step with a read (max)", "sites (per step)"], rows)]
    report(args, "host_syncs", "Host syncs per training step (counted on the CPU)", lines)


if __name__ == "__main__":
    main()
