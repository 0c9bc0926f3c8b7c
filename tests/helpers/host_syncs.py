"""The host syncs of each training step of a recipe, counted on the CPU (see clrun.host_syncs for what counts).

``count_host_syncs(recipe)`` trains ``recipe`` and returns the syncs of each step, by call site: step k
is everything from the start of its optimizer step to the start of the next (the loop's work after the
step, callbacks, the stop signal, logging), the data loader's work excluded. Step 1 (lazy state such as
the optimizer's moments is made there) and the last step (the epoch's end follows it) are left out.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

import clrun
from clrun.host_syncs import HostSyncCounter
from clrun.training.step import Step


@contextmanager
def counting_steps(monkeypatch_context) -> Iterator[list[Counter]]:
    """Inside: every optimizer step's host syncs (one Counter per step, in order, from step 2)."""
    per_step: list[Counter] = []
    counter = HostSyncCounter()
    original = Step.__call__

    def counted_step(self, images, *places):
        if counter.counting:  # the previous step's interval ends here
            per_step.append(counter.counts)
        counter.counts = Counter()
        counter.counting = self.run.step >= 1  # from step 2: step 1 makes the lazy state
        return original(self, images, *places)

    monkeypatch_context.setattr(Step, "__call__", counted_step)
    with counter:
        yield per_step
    # The last step's interval ran into the epoch's end: left out.


def count_host_syncs(recipe_path: Path, run_dir: Path, *overrides: str) -> list[Counter]:
    """``recipe_path`` trained a few steps in one epoch (``overrides`` set them), each step's syncs by site."""
    recipe = clrun.load_recipe(recipe_path, [*overrides, f"run.dir={run_dir}", "train.progress=false"])
    with pytest.MonkeyPatch.context() as patched, counting_steps(patched) as per_step:
        clrun.train(recipe)
    return per_step
