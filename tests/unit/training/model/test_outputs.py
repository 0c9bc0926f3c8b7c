"""The step's outputs by branch (issue 23, item 1): ``clrun.Branch`` holds one network's outputs and an
absent one raises a clear error; the flat names of earlier releases keep working; a loss's ``reads`` is
checked against the recipe when the run is built (``cl-run check`` names the loss's recipe line); the
networks compute the costly outputs only for a reader that reads them; a new per-view output is one field
of ``Branch`` and the module that fills it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

import clrun
from clrun.cli import main
from clrun.testing import branch_outputs, step_outputs
from clrun.training.model.branch import Branch, MissingOutput
from clrun.training.model.network import OnlineNetwork, detached
from clrun.training.model.outputs import StepOutputs
from clrun.training.model.reads import step_reads, vocabulary
from clrun.training.step import Step

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
MASKED = Path(__file__).resolve().parents[4] / "recipes" / "mae_fmnist.yaml"
NTXENT = "loss:\n  name: clrun/ntxent\n  temperature: 0.2\n"
PREDICTOR = "predictor:\n  name: clrun/mlp\n  hidden_dim: 64\n"
TARGET = "target:\n  momentum: 0.99\n"
ADD_TARGET = "add a `target:` section (a momentum target network, e.g. momentum: 0.996)"
ADD_PREDICTOR = "add a `predictor:` section (a head on the online branch, e.g. name: clrun/mlp)"

pytestmark = pytest.mark.usefixtures("cli_uses_session_registry")


def z(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


# -- Branch and StepOutputs -------------------------------------------------------------------------
def test_an_absent_output_is_absent_and_reading_it_says_what_the_recipe_needs():
    online = Branch(features=[z(4, 8)], projections=[z(4, 3)], predictions=None)
    out = StepOutputs([z(4, 1, 8, 8)], [True], None, online)
    assert "projections" in out.online and "predictions" not in out.online
    assert getattr(out.online, "predictions", None) is None and not hasattr(out.target, "projections")
    with pytest.raises(MissingOutput) as caught:
        out.target.projections
    message = str(caught.value)
    assert message.startswith("target.projections is not among this step's outputs: the recipe does not produce it")
    assert "a `target:` section (a momentum target network" in message and "reads = frozenset" in message
    assert isinstance(caught.value, clrun.ComponentError) and isinstance(caught.value, AttributeError)
    with pytest.raises(MissingOutput, match=r"^online\.predictions is not .* a `predictor:` section"):
        out.online.predictions
    assert out.has("online.projections") and not out.has("target.projections") and not out.has("masks")
    with pytest.raises(TypeError, match="a Branch has no output 'projection'"):
        Branch(projection=[z(4, 3)])


def test_the_flat_names_of_earlier_releases_keep_working():
    f, p, q, t = [z(4, 8), z(4, 8)], [z(4, 3), z(4, 3)], [z(4, 3), z(4, 3)], [z(4, 3)]
    for out in (StepOutputs(f, p, [True, False], None, t),  # the flat constructor, positionally
                StepOutputs(features=f, projections=p, is_global=[True, False], target_projections=t),
                step_outputs(p, [True, False], features=f, target_projections=t)):
        assert out.online.features == f and out.projections == p and out.target.projections == t
        assert out.predictions is None and out.target_tokens is None and out.masks is None  # None when absent, as before
        assert out.global_projections == p[:1] and out.global_predictions is None and out.target_projections == t
    out = step_outputs(p, predictions=q)
    assert out.predictions == q and out.global_predictions == q and out.target_projections is None
    same = branch_outputs(Branch(features=f, projections=p, predictions=q), None, [True, True])
    assert same.online.predictions == q and "projections" not in same.target and same.views == []


def test_detached_outputs_keep_their_branches():
    p = [z(4, 3).requires_grad_()]
    out = detached(step_outputs(p, target_projections=[z(4, 3)]))
    assert not out.projections[0].requires_grad and out.target_projections is not None
    assert "predictions" not in out.online and out.target._role == "target"
    assert dataclasses.replace(out, step=3).step == 3


# -- reads against the recipe: cl-run check ----------------------------------------------------------
def recipe_with(folder: Path, loss: str, *sections: str) -> Path:
    """tiny.yaml with ``loss`` in place of its loss entry (which stays at line 29: its settings at 30:3)."""
    path = folder / "recipe.yaml"
    path.write_text(TINY.read_text(encoding="utf-8").replace(NTXENT, loss) + "".join(sections), encoding="utf-8")
    return path


def check_error(path: Path, capsys) -> str:
    code = main(["check", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err.splitlines()[0]


def test_a_loss_that_needs_a_target_fails_check_at_its_recipe_line(tmp_path, capsys):
    path = recipe_with(tmp_path, "loss:\n  name: clrun/byol\n", PREDICTOR)
    assert check_error(path, capsys) == (
        f"{path}:30:3: error: loss: clrun/byol reads target.projections, which this recipe does not produce: "
        f"{ADD_TARGET}")


@pytest.mark.parametrize("loss", ["clrun/byol", "clrun/simsiam"])
def test_a_loss_that_needs_a_predictor_fails_check_at_its_recipe_line(loss, tmp_path, capsys):
    path = recipe_with(tmp_path, f"loss:\n  name: {loss}\n", TARGET)
    assert check_error(path, capsys) == (
        f"{path}:30:3: error: loss: {loss} reads online.predictions, which this recipe does not produce: "
        f"{ADD_PREDICTOR}")


def test_a_loss_that_needs_masks_fails_check_at_its_recipe_line(tmp_path, capsys):
    path = recipe_with(tmp_path, "loss:\n  name: clrun/mae\n")
    assert check_error(path, capsys) == (
        f"{path}:30:3: error: loss: clrun/mae reads masks, online.token_predictions and online.tokens, which this "
        "recipe does not produce: add a `masking:` section (masked global views for a backbone with patch tokens, "
        "e.g. generator: {name: clrun/block_mask}) and a `head:` in the `masking:` section (a token_head "
        "component: `cl-run components token_head`)")


def test_every_missing_read_is_named_with_the_sections_that_bring_them(tmp_path, capsys):
    path = recipe_with(tmp_path, "loss:\n  name: clrun/byol\n")
    assert check_error(path, capsys) == (
        f"{path}:30:3: error: loss: clrun/byol reads online.predictions and target.projections, which this recipe "
        f"does not produce: {ADD_PREDICTOR} and {ADD_TARGET[4:]}")


class Reader(nn.Module):
    """A loss with the ``reads`` a test gives it."""

    def __init__(self, reads=None) -> None:
        super().__init__()
        if reads is not None:
            self.reads = frozenset(reads)

    def forward(self, out):
        self.seen = out
        return sum(p.sum() for p in out.projections) * 0.0


def test_an_unknown_read_is_refused_with_the_vocabulary():
    recipe = clrun.load_recipe(TINY)
    with pytest.raises(clrun.ComponentError, match=r"loss: clrun/ntxent reads target\.features, which is not a step "
                                                   r"output; `reads` names some of: views, masks, online\.features"):
        step_reads(recipe, Reader({"target.features"}))
    assert step_reads(recipe, Reader({"online.projections"})) == {"online.projections"}
    everything = step_reads(recipe, Reader())  # no reads: every output the recipe produces
    assert everything == {"views", "online.features", "online.projections"}


def test_callbacks_reads_are_checked_and_never_make_the_step_compute_more():
    recipe = clrun.load_recipe(TINY, ["callbacks=[{name: clrun/tensorboard}]"])
    assert step_reads(recipe, Reader({"online.projections"}), recipe.callbacks) == {"online.projections"}
    recipe = clrun.load_recipe(TINY, ["callbacks=[{name: clrun/online_probe, num_classes: 10}]"])
    assert step_reads(recipe, Reader({"online.projections"}), recipe.callbacks) == {"online.projections"}


def test_a_callback_reading_what_the_loss_leaves_out_is_refused_at_its_line(monkeypatch):
    recipe = clrun.load_recipe(MASKED, ["callbacks=[{name: clrun/online_probe, num_classes: 10}]"])
    probe = recipe.callbacks[0].component.factory
    monkeypatch.setattr(probe, "reads", frozenset({"online.features", "online.token_projections"}), raising=False)
    assert step_reads(recipe, Reader({"online.token_projections"}), recipe.callbacks) == {"online.token_projections"}
    with pytest.raises(clrun.ComponentError) as caught:
        step_reads(recipe, Reader({"online.projections"}), recipe.callbacks)
    assert str(caught.value) == (
        "<command line>:1:12: error: callbacks.0: clrun/online_probe reads online.token_projections, which this recipe's loss does "
        "not read: the step computes only what the loss reads, so that a callback never changes what the run trains")


def test_token_projections_are_computed_only_for_a_reader_that_reads_them():
    vit = clrun.create("backbone", "timm/vit_tiny_patch16_224", img_size=16, mask_token=True,
                       model_args={"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2})
    network = OnlineNetwork(vit, nn.Linear(16, 8))
    views = [z(2, 3, 16, 16)]
    masks = [clrun.create("mask", "clrun/block_mask")(2, (4, 4), "cpu")]
    plain = network(views, masks)
    assert "tokens" in plain and "token_projections" not in plain
    wanted = network(views, masks, wants={"token_projections"})
    assert wanted.token_projections[0].shape == (2, 16, 8)


def fp32_step(run) -> Step:
    return Step(run, "fp32", torch.amp.GradScaler("cpu", enabled=False), None)


# -- a new per-view output: one field, and the module that fills it -----------------------------------
def test_a_new_per_view_output_is_one_field_of_branch_and_the_module_that_fills_it(monkeypatch, build_run, with_loss):
    """Nothing else changes: the step's record, the trainable, the step, the reads vocabulary and the check,
    what the network is asked for and the outputs callbacks receive all follow from Branch's fields."""
    recipe = clrun.load_recipe(TINY)
    # The one field.
    monkeypatch.setitem(Branch.__annotations__, "feature_norms", "list[Tensor]")

    # The module that fills it, when a reader reads it.
    class WithNorms(OnlineNetwork):
        def forward(self, views, masks=None, drop=False, wants=frozenset()):
            out = super().forward(views, masks, drop, wants)
            if "feature_norms" in wants:
                out.feature_norms = [f.norm(dim=1) for f in out.features]
            return out

    built = build_run(recipe)
    built.parts.network.__class__ = WithNorms
    assert "online.feature_norms" in vocabulary()
    run = with_loss(built, Reader({"online.projections", "online.feature_norms"}))
    assert run.parts.reads == {"online.projections", "online.feature_norms"}
    images = torch.stack([recipe.data.dataset.build()[i][0] for i in range(16)])
    _, outputs = fp32_step(run)(images)
    seen = run.parts.loss_fn.seen
    assert [tuple(n.shape) for n in seen.online.feature_norms] == [(16,), (16,)]
    assert torch.equal(seen.online.feature_norms[0], seen.online.features[0].norm(dim=1))
    assert not outputs.online.feature_norms[0].requires_grad  # what callbacks get: detached, like the others
    # Falsifiable: a reader that does not read it does not get it, and a read of an undeclared field is refused.
    run = with_loss(built, Reader({"online.projections"}))
    run.step = 1
    fp32_step(run)(images)
    assert "feature_norms" not in run.parts.loss_fn.seen.online
    with pytest.raises(clrun.ComponentError, match="online.feature_sizes, which is not a step output"):
        step_reads(recipe, Reader({"online.feature_sizes"}))
