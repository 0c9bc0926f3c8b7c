"""A non-finite loss never reaches the weights, decided on the device: the step that has one, and every step
after it until the loop reads the metrics, leave the weights, the optimizer's moments and step counts, the
BatchNorm statistics, the loss's queue and the EMA target exactly as they were; the read names the first
bad step."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import clrun
from clrun.training.non_finite import skips_on_device
from clrun.training.step import Step
from clrun.training.step_metrics import PendingSteps

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


def state(run) -> dict[str, torch.Tensor]:
    """Everything a step may change: network and target parameters and buffers, the loss's buffers (MoCo's
    queue and its pointer), the optimizer's state; not the EMA schedule's position (see test below)."""
    parts = run.parts
    out = {f"network.{k}": v for k, v in parts.network.state_dict().items()}
    out |= {f"target.{k}": v for k, v in parts.target.state_dict().items() if k not in ("momentum", "updates")}
    out |= {f"loss.{k}": v for k, v in parts.loss_fn.state_dict().items()}
    for i, (p, s) in enumerate(parts.optimizer.state.items()):
        out |= {f"optimizer.{i}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)}
    return {k: v.detach().clone() for k, v in out.items()}


@pytest.fixture(scope="module")
def moco(tmp_path_factory):
    """MoCo v2 as its Fashion-MNIST recipe builds it (BatchNorm, an EMA target, a queue, fused AdamW), small."""
    overrides = ["data.dataset.subset=64", "data.batch_size=16", "loss.queue_size=64", "health.enabled=false",
                 "callbacks=[]", f"run.dir={tmp_path_factory.mktemp('runs')}"]
    return clrun.load_recipe(RECIPES / "mocov2_fmnist.yaml", overrides)


# torch's AdamW is fused by default and skips an update itself; with foreach it cannot, and the step puts its
# parameters and state back from copies.
@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_a_nan_step_and_the_steps_after_it_change_nothing(moco, build_run, implementation):
    if implementation == "foreach":
        moco = dataclasses.replace(moco, optimizer=dataclasses.replace(moco.optimizer, params={**moco.optimizer.params, "foreach": True}))
    run = build_run(moco)
    step = Step.of(run)
    assert skips_on_device(run.parts.optimizer) == (implementation == "fused")
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    pending = PendingSteps()

    def steps(n: int) -> dict[str, torch.Tensor]:
        for _ in range(n):
            record, _ = step(images)
            pending.add(record)
            run.step += 1
        return state(run)

    first = steps(1)
    before = steps(1)
    # The control, so that the comparison below can fail: a good step moves weights, moments, queue and target.
    assert {k.split(".")[0] for k in first if not torch.equal(first[k], before[k])} == {"network", "target", "loss", "optimizer"}
    run.parts.views.normalize.mean.fill_(float("nan"))  # every view NaN from here on: the loss, the BN statistics...
    after = steps(2)
    assert before.keys() == after.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    losses = [r.metrics["loss"] for r in pending.read()]
    assert all(math.isfinite(v) for v in losses[:2]) and all(math.isnan(v) for v in losses[2:])
    assert not bool(step.guard.healthy)  # sticky: a later finite loss would not update either
