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

from clrun_timed import compare_throughput
from handwritten import train_handwritten
from reporting import verdict

TARGET = 0.03


def judge(clrun_speed: float, hand_speed: float) -> str:
    overhead = hand_speed / clrun_speed - 1
    return verdict("cl-run's overhead", f"{100 * overhead:+.1f}%", "<= 3%", overhead <= TARGET)


if __name__ == "__main__":
    compare_throughput(__doc__, "overhead", "Framework overhead: cl-run against a hand-written loop",
                       "hand-written PyTorch loop", train_handwritten, judge)
