"""The online/target wiring of the core: predictor head, momentum (EMA) target network and its schedule,
and what a loss receives in ``StepOutputs``. Nothing here depends on a particular method's loss: the
recipe's loss is replaced by a recorder that returns a simple differentiable function of the outputs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import clrun
from clrun.recipe.schema import TargetSection
from clrun.training.model.build import build_model
from clrun.training.optim.optimization import build_optimization
from clrun.training.parallel.parallelize import parallelize
from clrun.training.parts import assemble
from clrun.training.model.reads import step_reads
from clrun.training.run import Run
from clrun.training.step import Step
from clrun.training.step_metrics import PendingSteps
from clrun.training.model.target import momentum_at

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"

HEADS = """
predictor:
  name: clrun/mlp
  hidden_dim: 48
  out_dim: 24
target:
  momentum: 0.9
  final_momentum: 1.0
"""

LOCAL_VIEW = """
  - name: local
    count: 3
    local: true
    transforms:
      - name: kornia/RandomResizedCrop
        size: [16, 16]
        scale: [0.05, 0.3]
"""


def recipe_with(tmp_path: Path, extra: str, local: bool = False):
    text = TINY.read_text(encoding="utf-8")
    if local:
        text = text.replace("\nbackbone:", LOCAL_VIEW + "\nbackbone:", 1)
    path = tmp_path / "recipe.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return clrun.load_recipe(path)


class Recorder(nn.Module):
    """Stands in for a loss: remembers what it received; the loss pulls predictions towards targets."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[clrun.StepOutputs] = []

    def forward(self, out: clrun.StepOutputs) -> dict:
        self.seen.append(out)
        preds = [p[:, :8] for p in out.global_predictions]  # widths differ in these tests; compare a slice
        loss = sum(((p - t[:, :8]) ** 2).mean() for p, t in zip(preds, reversed(out.target_projections)))
        return {"loss": loss, "n_views": float(len(out.projections))}


def build(recipe, steps_per_epoch: int = 10, loss: nn.Module | None = None) -> tuple[Run, torch.Tensor]:
    """``recipe``'s run (on the CPU, nothing written) with ``steps_per_epoch``, its loss replaced by ``loss``
    before the model is placed and optimized; and 8 images to train it on."""
    torch.manual_seed(0)
    dataset = recipe.data.dataset.build()
    images = torch.stack([dataset[i][0] for i in range(8)])
    model = build_model(recipe, images[:4], steps_per_epoch)
    if loss is not None:
        model = dataclasses.replace(model, loss_fn=loss, reads=step_reads(recipe, loss))
    cpu = torch.device("cpu")
    placed = parallelize(model, recipe, cpu, training=True)
    parts = assemble(placed, build_optimization(placed, recipe, steps_per_epoch))
    return Run(recipe, parts, cpu, None, steps_per_epoch), images


def read_metrics(record) -> dict[str, float]:
    """A step's metrics as the loop reads them."""
    pending = PendingSteps()
    pending.add(record)
    return pending.read()[0].metrics


def fp32_step(run: Run) -> Step:
    return Step(run, "fp32", torch.amp.GradScaler("cpu", enabled=False), None)


def test_cosine_schedule_goes_from_momentum_to_final():
    s = TargetSection(momentum=0.99, final_momentum=1.0)
    assert momentum_at(s, 0, 100) == pytest.approx(0.99)
    assert momentum_at(s, 50, 100) == pytest.approx(0.995)
    assert momentum_at(s, 25, 100) == pytest.approx(1.0 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert momentum_at(s, 100, 100) == pytest.approx(1.0)
    assert momentum_at(s, 150, 100) == pytest.approx(1.0)  # past the end it stays final
    constant = TargetSection(momentum=0.99, final_momentum=1.0, schedule="constant")
    assert [momentum_at(constant, k, 100) for k in (0, 50, 100)] == [0.99, 0.99, 0.99]


def test_linear_schedule_is_ijepas_momentum_scheduler():
    """I-JEPA's train.py:228-229: ``ema[0] + i * (ema[1] - ema[0]) / (ipe * num_epochs * ipe_scale)``."""
    s = TargetSection(momentum=0.996, final_momentum=1.0, schedule="linear")
    official = [0.996 + i * (1.0 - 0.996) / 300 for i in range(300)]
    assert [momentum_at(s, i, 300) for i in range(300)] == pytest.approx(official, rel=1e-15)
    assert momentum_at(s, 400, 300) == 1.0


def test_step_outputs_carry_predictions_and_targets_of_global_views_only(tmp_path):
    recipe = recipe_with(tmp_path, HEADS, local=True)
    recorder = Recorder()
    run, images = build(recipe, loss=recorder)
    run.step = 7
    record, _ = fp32_step(run)(images)
    metrics = read_metrics(record)
    out = recorder.seen[0]
    assert out.is_global == [True, True, False, False, False]
    assert [tuple(p.shape) for p in out.projections] == [(8, 32)] * 5
    assert [tuple(p.shape) for p in out.predictions] == [(8, 24)] * 5  # the predictor's in_dim was the projection width
    assert len(out.target_projections) == 2 and all(t.shape == (8, 32) for t in out.target_projections)
    assert not any(t.requires_grad for t in out.target_projections)
    assert (out.step, out.total_steps) == (7, 10)
    assert metrics["n_views"] == 5.0 and metrics["target_momentum"] == pytest.approx(0.9)
    assert all(p.grad is None for p in run.parts.target.parameters())


def test_ema_update_matches_the_formula_and_advances_the_schedule(tmp_path):
    recipe = recipe_with(tmp_path, HEADS)
    run, images = build(recipe, steps_per_epoch=4, loss=Recorder())
    target, online = run.parts.target, run.parts.network
    # At the start the target is an exact copy of the online backbone + projector.
    for t, o in zip(target.backbone.state_dict().values(), online.backbone.state_dict().values()):
        assert torch.equal(t, o)
    train_step = fp32_step(run)
    for step in range(3):
        before = [p.detach().clone() for p in target.parameters()]
        m = momentum_at(recipe.target, step, 4)
        assert float(target.momentum) == pytest.approx(m)
        run.step = step
        train_step(images)
        online_params = [*online.backbone.parameters(), *online.projector.parameters()]
        for b, t, o in zip(before, target.parameters(), online_params):
            torch.testing.assert_close(t, m * b + (1 - m) * o.detach(), rtol=0, atol=1e-6)
        assert int(target.updates) == step + 1
    assert float(target.momentum) == pytest.approx(momentum_at(recipe.target, 3, 4))
    # The target really moved (the online weights changed) but never by gradient.
    assert any(not torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters()))
    assert all(not p.requires_grad for p in target.parameters())


def test_predictor_is_trained_and_target_is_not_in_the_optimizer(tmp_path):
    recipe = recipe_with(tmp_path, HEADS)
    parts = build(recipe)[0].parts
    optimized = {id(p) for g in parts.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in optimized for p in parts.network.predictor.parameters())
    assert not any(id(p) in optimized for p in parts.target.parameters())


def test_target_section_rejects_momentum_out_of_range(tmp_path):
    with pytest.raises(clrun.UserError) as info:
        recipe_with(tmp_path, HEADS.replace("momentum: 0.9\n", "momentum: 1.5\n"))
    assert "target.momentum: must be between 0 and 1 (e.g. 0.99 or 0.996), got 1.5" in str(info.value)


# -- the target is a fixed function of its weights, kept at the weights' precision ---------------------------

def vit_network(**args):
    from clrun.training.model.network import OnlineNetwork

    torch.manual_seed(0)
    backbone = clrun.create("backbone", "timm/test_vit", img_size=32, **args)
    return OnlineNetwork(backbone, clrun.create("projector", "clrun/mlp", in_dim=64, hidden_dim=8, out_dim=4))


def test_the_target_drops_no_paths_while_the_online_network_keeps_its_own():
    """DINO, iBOT and DINOv2 build their teacher without stochastic depth: a copy of a student with drop path
    (and dropout) must not keep them, or two forwards of one view would differ."""
    from clrun.training.model.target import TargetNetwork

    online = vit_network(drop_path_rate=0.5, model_args={"proj_drop_rate": 0.5})
    target = TargetNetwork(online, TargetSection(momentum=0.9), total_steps=10).train()
    x = torch.randn(2, 3, 32, 32)
    first, second = target([x]).projections[0], target([x]).projections[0]
    assert torch.equal(first, second)
    assert online.backbone.blocks[-1].drop_path1.drop_prob > 0  # the student's own, untouched
    assert not torch.equal(online.backbone(x), online.backbone(x))


def test_a_float64_target_moves_by_the_formula_in_float64():
    """The health flag that gates the update multiplies 1 - m in the weights' dtype: in float32 it would be
    0.0040000002 for m = 0.996, a relative error of 5e-8 in every float64 update (step-for-step parity with
    the reference code runs in float64)."""
    from clrun.training.model.target import TargetNetwork

    online = vit_network().double()
    target = TargetNetwork(online, TargetSection(momentum=0.996), total_steps=10)
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    target.update(online, healthy=torch.tensor(True))
    online_params = [*online.backbone.parameters(), *online.projector.parameters()]
    for b, t, o in zip(before, target.parameters(), online_params):
        expected = b + (1 - 0.996) * (o - b)  # torch.lerp's formula, in float64
        torch.testing.assert_close(t, expected, rtol=1e-15, atol=1e-15)
