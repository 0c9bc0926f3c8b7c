"""clrun/linear_probe: a linear classifier on frozen, standardized features (the linear evaluation protocol).

(1) The classifier's training (``train_linear_classifier``) reaches 100% on well separated classes and the
    Bayes accuracy (computed analytically) on overlapping ones, whatever the features' scale.
(2) It is deterministic and never draws from torch's global random generator; from half-precision
    features it trains as from their fp32 values, upcasting a mini-batch at a time (no fp32 copy).
(3) Through a real training, the callback reports ``linear_top1`` and ``linear_top1_projector``, also in
    mid-training (``every``), without changing what the run trains; ``cl-run eval`` reproduces the numbers.
(4) Unlabeled data and bad arguments are errors with exact messages.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.data import Dataset

import clrun
from clrun.evaluation import evaluate as cl_run_eval
from clrun.plugins.callbacks.linear import Standardize, accuracy, moments, standardize, train_linear_classifier
from clrun.plugins.callbacks.linear_probe import LinearProbe
from clrun.plugins.datasets.synthetic import Synthetic
from clrun.training import checkpointing

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
TRAIN_SET = "{name: clrun/synthetic, num_images: 128, num_classes: 4, seed: 2}"
TEST_SET = "{name: clrun/synthetic, num_images: 128, num_classes: 4, seed: 1}"
PROBE = f"{{name: clrun/linear_probe, every: 1, train: {TRAIN_SET}, test: {TEST_SET}}}"


def gaussian_classes(means: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points, classes in turn, each its class mean plus unit-variance isotropic Gaussian noise."""
    y = torch.arange(n) % len(means)
    return means[y] + torch.randn(n, means.shape[1], generator=generator), y


def test_separable_classes_are_all_classified_right():
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(4, 32, generator=generator)
    means = 10 * directions / directions.norm(dim=1, keepdim=True)  # 4 classes, about 14 noise sigmas apart
    train_x, train_y = gaussian_classes(means, 400, generator)
    test_x, test_y = gaussian_classes(means, 2000, generator)
    train_x, test_x = standardize(train_x, test_x)
    classifier = train_linear_classifier(train_x, train_y, num_classes=4)
    assert accuracy(classifier, test_x, test_y) >= 0.995
    assert accuracy(classifier, train_x, train_y) == 1.0


@pytest.mark.parametrize("mu", [0.5, 1.0])
def test_overlapping_classes_reach_the_bayes_accuracy(mu):
    """Two classes with means -mu and +mu along the first of 16 axes, unit variance in all: the Bayes
    classifier (the sign of the first coordinate) is right with probability Phi(mu) (0.691 and 0.841)."""
    bayes = 0.5 * (1 + math.erf(mu / math.sqrt(2)))
    generator = torch.Generator().manual_seed(1)
    means = torch.zeros(2, 16)
    means[:, 0] = torch.tensor([-mu, mu])
    train_x, train_y = gaussian_classes(means, 4000, generator)
    test_x, test_y = gaussian_classes(means, 20000, generator)  # the estimate's standard error: 0.003
    # An arbitrary scale and offset, as features have: standardization takes it away.
    train_x, test_x = standardize(7.0 * train_x + 3.0, 7.0 * test_x + 3.0)
    classifier = train_linear_classifier(train_x, train_y, num_classes=2)
    assert accuracy(classifier, test_x, test_y) == pytest.approx(bayes, abs=0.015)  # 0.686 and 0.839 here


def test_training_is_deterministic_and_leaves_the_global_generator_alone():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 8, generator=generator), torch.randint(0, 3, (300,), generator=generator)
    before = torch.get_rng_state()
    a = train_linear_classifier(x, y, 3, epochs=5, batch_size=64, seed=7)
    b = train_linear_classifier(x, y, 3, epochs=5, batch_size=64, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    c = train_linear_classifier(x, y, 3, epochs=5, batch_size=64, seed=8)  # another batch order
    assert not torch.equal(a.weight, c.weight)


class Made(TorchFunctionMode):
    """The dtype and element count of every tensor a torch function returns."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[tuple[torch.dtype, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.outputs += [(t.dtype, t.numel()) for t in (out if isinstance(out, tuple) else (out,))
                         if isinstance(t, torch.Tensor)]
        return out


def test_half_precision_features_train_as_their_fp32_values_without_an_fp32_copy():
    generator = torch.Generator().manual_seed(3)
    x = (3.0 * torch.randn(600, 24, generator=generator) + 1.0).bfloat16()
    y = torch.randint(0, 3, (600,), generator=generator)
    scale = Standardize.fit(x)
    with Made() as made:
        half = train_linear_classifier(x, y, 3, epochs=1, batch_size=64, seed=1, inputs=scale)
    # Upcast and standardized a mini-batch at a time: the exact classifier of the whole fp32 upcast...
    full = train_linear_classifier(standardize(x.float())[0], y, 3, epochs=1, batch_size=64, seed=1)
    assert torch.equal(half.weight, full.weight) and torch.equal(half.bias, full.bias)
    # ...while no fp32 tensor larger than a mini-batch was made.
    assert max(n for dtype, n in made.outputs if dtype == torch.float32) == 64 * 24
    assert x.dtype == torch.bfloat16


def test_moments_are_read_in_chunks_and_match_torchs():
    x = (torch.randn(3000, 40, generator=torch.Generator().manual_seed(4)) * 5 + 2).bfloat16()
    with Made() as made:
        mean, var = moments(x, chunk_values=400 * 40)  # 8 chunks, the last one partial
    assert max(n for dtype, n in made.outputs if dtype == torch.float64) == 400 * 40  # never the whole x
    torch.testing.assert_close(mean, x.float().mean(dim=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var, x.float().var(dim=0, unbiased=False), rtol=1e-5, atol=1e-5)


def test_standardize_uses_the_train_statistics():
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])  # the second feature is constant: it maps to 0, not NaN
    train_s, other_s = standardize(train, torch.tensor([[2.0, 6.0]]))
    assert torch.allclose(train_s, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    assert other_s[0, 0] == 0.0 and torch.isfinite(other_s).all()


def load(folder: Path, name: str, callbacks: str):
    return clrun.load_recipe(TINY, ["train.epochs=2", f"run.dir={folder}", f"run.name={name}",
                                    f"callbacks={callbacks}", "health.enabled=false"])


@pytest.fixture(scope="module")
def probed(tmp_path_factory, reports_skipped):
    """A 2-epoch tiny run evaluated by the probe after each epoch."""
    with reports_skipped():  # the report is not under test here: skip its plots
        return clrun.train(load(tmp_path_factory.mktemp("probed"), "probed", f"[{PROBE}]"))


def test_the_callback_reports_both_accuracies(probed, capfd):
    summary = json.loads((probed.directory / "summary.json").read_text(encoding="utf-8"))
    for key in ("linear_top1", "linear_top1_projector"):
        assert 0.0 <= summary[key] <= 1.0, summary
        assert summary[key] == probed.summary[key]
    assert summary["linear_top1"] >= 0.5, summary  # 0.98 here: the striped classes are easy (chance: 0.25)
    lines = (probed.directory / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    epochs = [r for r in map(json.loads, lines) if r["kind"] == "epoch"]
    assert "linear_top1_projector" in epochs[0]  # every: 1, in mid-training
    assert "linear_top1" not in epochs[-1]  # the last epoch's evaluation is the final one


@pytest.mark.usefixtures("no_report")  # the report is not under test here: skip its plots
def test_evaluating_is_deterministic_and_changes_nothing_the_run_trains(probed, tmp_path):
    probe = LinearProbe(Synthetic(128, 4, seed=2), Synthetic(128, 4, seed=1))
    before = torch.get_rng_state()
    first = probe.evaluate(probed)
    assert torch.equal(torch.get_rng_state(), before)
    assert probe.evaluate(probed) == first
    assert first == {k: probed.summary[k] for k in first}  # the same numbers as at the end of the run

    # The mid-training evaluation left the training bit-identical to a run without the probe.
    plain = clrun.train(load(tmp_path, "plain", "[]"))
    with_probe = checkpointing.load(probed.folder.checkpoint)
    without = checkpointing.load(plain.folder.checkpoint)
    for key in with_probe["network"]:
        assert torch.equal(with_probe["network"][key], without["network"][key]), key
    assert torch.equal(with_probe["rng"]["torch"], without["rng"]["torch"])


def test_cl_run_eval_reproduces_the_numbers(probed):
    results = cl_run_eval(probed.directory)
    assert results == {k: probed.summary[k] for k in ("linear_top1", "linear_top1_projector")}


class Unlabeled(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((3, 32, 32), 10 * i, dtype=torch.uint8), -1


def test_unlabeled_data_is_an_error(probed):
    with pytest.raises(clrun.UserError) as info:
        LinearProbe(Unlabeled(), Synthetic(16, 4)).evaluate(probed)
    assert str(info.value) == "clrun/linear_probe needs labeled train and test data sets (some labels are -1, i.e. unlabeled)"


def test_bad_arguments_are_errors():
    data = {"name": "clrun/synthetic", "num_images": 8}
    with pytest.raises(clrun.ComponentError) as info:
        clrun.create("callback", "clrun/linear_probe", train=data, test=data, epochs=0, lr=-1.0)
    assert str(info.value) == (  # the ranges the signature declares, each at its argument
        "clrun.create('callback', 'clrun/linear_probe'): epochs: must be an integer >= 1, got 0\n"
        "clrun.create('callback', 'clrun/linear_probe'): lr: must be a number > 0, got -1.0")
    with pytest.raises(clrun.ComponentError) as info:  # built directly: clrun.checked, the same limits
        LinearProbe(Synthetic(8, 4), Synthetic(8, 4), embed_batch_size=0)
    assert (str(info.value), info.value.argument) == (
        "clrun/linear_probe: embed_batch_size must be an integer >= 1, got 0", "embed_batch_size")
    assert isinstance(clrun.create("callback", "clrun/linear_probe", train=data, test=data), LinearProbe)
