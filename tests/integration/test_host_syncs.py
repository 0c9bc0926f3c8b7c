"""The host-sync budget of a training step, counted on the CPU (clrun.host_syncs): every shipped CPU recipe
trains a few tiny steps with callbacks off, and a step makes no host synchronisation at all unless it is a
step that reads the metrics (every ``train.log_every`` steps), which makes exactly one, the read itself.

What a GPU would wait for is counted by where the tensor came from (see clrun.host_syncs): the data loader's
work and host-side draws (crop boxes, masks, optimizer step counters on the host) are free; a read of
anything computed on the device is a sync. bench/host_syncs.py prints the same counts as a table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.host_syncs import count_host_syncs

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
CPU_RECIPES = sorted(p.stem for p in RECIPES.glob("*_fmnist.yaml"))
LOG_EVERY = 3
STEPS = 7  # counted: steps 2..6 (step 1 makes the lazy state; the epoch's end follows step 7)
# Tiny: the counts do not depend on the batch size. Callbacks off: evaluators run at epoch ends only.
TINY = ("data.batch_size=8", "data.dataset.subset=96", "data.num_workers=0", "health.enabled=false",
        "callbacks=[]", f"train.max_steps={STEPS}", f"train.log_every={LOG_EVERY}", "init=null")  # init: weights elsewhere
# The read of the pending steps' metrics, at a logging step (core/ in a checkout, clrun/ when installed).
READ = "training/step_metrics.py:"


def assert_within_budget(stem: str, tmp_path: Path) -> None:
    per_step = count_host_syncs(RECIPES / f"{stem}.yaml", tmp_path, *TINY)
    assert len(per_step) == STEPS - 2
    for step, counts in enumerate(per_step, start=2):
        if step % LOG_EVERY == 0:
            assert sum(counts.values()) == 1 and all(READ in site for site in counts), (step, counts)
        else:
            assert sum(counts.values()) == 0, (step, counts)


def test_the_quickstart_step_waits_for_the_device_only_when_it_logs(tmp_path):
    assert_within_budget("quickstart", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stem", CPU_RECIPES)
def test_every_cpu_recipe_step_waits_for_the_device_only_when_it_logs(stem, tmp_path):
    assert_within_budget(stem, tmp_path)
