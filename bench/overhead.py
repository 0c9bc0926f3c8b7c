"""Framework overhead: a cl-run SimCLR step against the same step written by hand in plain PyTorch.

    python bench/overhead.py                                    # CPU defaults: about 3 minutes on 2 cores
    python bench/overhead.py --repeats 5 --results bench/RESULTS.md
    python bench/overhead.py --device cuda --backbone resnet18 --batch-size 512 --warmup 20 --steps 200

Both sides train the recipe (``--recipe``, the quickstart by default) with the benchmark's overrides (see
``common.recipe_overrides``): the same data, timm backbone, projector, kornia augmentations, NT-Xent,
optimizer and schedule; ``bench/handwritten.py`` is the hand-written side. The same parameter count on both
rows says the networks match. Overhead = cl-run's time per step / the hand-written loop's - 1 (from the
median images/s). Target: <= 3%.
"""

from __future__ import annotations

from clrun_timed import against_clrun
from common import median, parser, settings, setup
from reporting import describe, report, summary_table, verdict
from handwritten import train_handwritten

TARGET = 0.03


def main() -> None:
    args = parser(__doc__).parse_args()
    device = setup(args)
    cfg = settings(args)
    results = against_clrun(args, device, "hand-written PyTorch loop",
                            lambda window: train_handwritten(cfg, device, args.precision, window))
    clrun_speed, hand_speed = (median(runs, "images_per_s") for runs in results.values())
    overhead = hand_speed / clrun_speed - 1
    report(args, "overhead", "Framework overhead: cl-run against a hand-written loop", [
        describe(args, cfg), "",
        *summary_table(results, [("parameters", "parameters")]), "",
        verdict("cl-run's overhead", f"{100 * overhead:+.1f}%", "<= 3%", overhead <= TARGET),
    ])


if __name__ == "__main__":
    main()
