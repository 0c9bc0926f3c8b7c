"""The contracts of ``clrun.testing`` catch what they promise to catch: each broken component below
breaks exactly the rule it is named after, and the check says so (the built-ins passing them shows
the other half: tests/test_contract_*.py)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clrun
from clrun import loss_kit, plugin_manager, testing
from clrun.registry import Registry

# Some broken components below take a standard deviation over one row on purpose.
pytestmark = pytest.mark.filterwarnings(r"ignore:std\(\).*degrees of freedom:UserWarning")


@pytest.fixture
def fresh_registry():
    """A registry holding only the components a test adds, as the default for ``clrun.create``."""
    previous = plugin_manager.default_registry()
    fresh = Registry()
    plugin_manager.set_default_registry(fresh)
    yield fresh
    plugin_manager.set_default_registry(previous)


def cosine(out) -> torch.Tensor:
    """A correct loss body: negative cosine of the two global views, in float32 with autocast off."""
    z1, z2 = loss_kit.global_projections("bad/loss", out, "compare", exactly=2)
    with loss_kit.autocast_off(z1):
        return -F.cosine_similarity(z1.float(), z2.float()).mean()


class Loss(nn.Module):
    """A correct loss."""

    def forward(self, out):
        return cosine(out)


def loss_with(body):
    """A loss class whose ``forward(out)`` is ``body(self, out)``."""
    return type("BrokenLoss", (nn.Module,), {"forward": lambda self, out: body(self, out)})


class HiddenState(nn.Module):
    """Keeps a running offset in a plain attribute, which state_dict() does not hold."""

    def __init__(self):
        super().__init__()
        self.offset = torch.randn(())

    def forward(self, out):
        self.offset = self.offset + 1
        return cosine(out) + self.offset


BROKEN_LOSSES = [
    ("returns_a_loss", lambda self, out: -F.cosine_similarity(*out.global_projections), "return a 0-dim tensor"),
    ("returns_a_loss", lambda self, out: cosine(out).detach(), "does not require grad"),
    ("metrics_are_detached", lambda self, out: {"loss": cosine(out), "cos": -cosine(out)}, "return it with .detach()"),
    ("float32_under_autocast",
     lambda self, out: -(out.projections[0] @ out.projections[1].T).diagonal().mean(), "under bf16 autocast the loss is"),
    ("finite_gradients",
     lambda self, out: cosine(out) + (out.projections[0] - out.projections[0].detach()).square().sum(1).sqrt().mean(),
     "non-finite gradient"),
    ("view_counts", lambda self, out: -F.cosine_similarity(*out.global_projections).mean(),
     "with one global view: raised TypeError"),
    ("batch_of_one", lambda self, out: -F.cosine_similarity(*out.projections).mean() + out.projections[0].std(0).mean(),
     "with a batch of 1 image: the loss is nan"),
    ("missing_predictor_or_target",
     lambda self, out: cosine(out) + 0 * sum(p.sum() for p in out.predictions), "raised TypeError"),
]


class ReadsTooLittle(Loss):
    """Reads the target's projections without declaring them."""

    reads = frozenset({"online.projections"})

    def forward(self, out):
        return cosine(out) + 0 * out.target.projections[0].sum()


def test_a_loss_that_reads_more_than_it_declares_fails_its_contract(fresh_registry):
    fresh_registry.add(clrun.Component("loss", "bad/loss", ReadsTooLittle), "tests")
    with pytest.raises(testing.ContractError, match=r"only_what_it_reads: with only the outputs it reads "
                                                    r"\(online\.projections\) it raised MissingOutput: target\.projections"):
        testing.check("loss", "bad/loss", "only_what_it_reads")


@pytest.mark.parametrize("contract,body,message", BROKEN_LOSSES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BROKEN_LOSSES)])
def test_a_broken_loss_fails_its_contract(fresh_registry, contract, body, message):
    fresh_registry.add(clrun.Component("loss", "bad/loss", loss_with(body)), "tests")
    with pytest.raises(testing.ContractError, match=re.escape(message)):
        testing.check("loss", "bad/loss", contract)


def test_hidden_loss_state_fails_the_state_contract(fresh_registry):
    fresh_registry.add(clrun.Component("loss", "bad/loss", HiddenState), "tests")
    with pytest.raises(testing.ContractError, match="some state is kept outside state_dict"):
        testing.check("loss", "bad/loss", "state_in_state_dict")


def test_a_correct_loss_passes_every_contract(fresh_registry):
    fresh_registry.add(clrun.Component("loss", "bad/loss", Loss), "tests")
    testing.check_loss("bad/loss")


# ---------------------------------------------------------------- heads and backbones


class Head(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 8, mode: str = "ok"):
        super().__init__()
        self.linear, self.mode = nn.Linear(in_dim, out_dim), mode

    def forward(self, x):
        y = self.linear(x)
        if self.mode == "flat":
            return y.sum(dim=1)
        if self.mode == "batch_stats":  # standardized over the batch even in eval mode: NaN for one row
            return (y - y.mean(0)) / y.std(0)
        if self.mode == "detached":
            return self.linear(x.detach())
        return y


BROKEN_HEADS = [
    ("projector", {"mode": "flat"}, "output_shape", "must return a (4, width) tensor"),
    ("predictor", {}, "output_shape", "a predictor's output width must be its in_dim"),
    ("projector", {"mode": "batch_stats"}, "eval_batch_of_one", "non-finite values"),
    ("projector", {"mode": "detached"}, "gradients", "the backbone would not train"),
]


@pytest.mark.parametrize("kind,settings,contract,message", BROKEN_HEADS, ids=[c for _, _, c, _ in BROKEN_HEADS])
def test_a_broken_head_fails_its_contract(fresh_registry, kind, settings, contract, message):
    fresh_registry.add(clrun.Component(kind, "bad/head", Head), "tests")
    with pytest.raises(testing.ContractError, match=re.escape(message)):
        testing.check(kind, "bad/head", contract, **settings)


def test_an_unpooled_backbone_fails(fresh_registry):
    fresh_registry.add(clrun.Component("backbone", "bad/conv", lambda: nn.Conv2d(3, 4, 3)), "tests")
    with pytest.raises(testing.ContractError, match=re.escape("must return a (2, width) tensor")):
        testing.check("backbone", "bad/conv", "pooled_features")


# ---------------------------------------------------------------- augmentations


class Augmentation(nn.Module):
    def __init__(self, mode: str = "ok"):
        super().__init__()
        self.mode = mode

    def forward(self, x):
        if self.mode == "double":
            return x.double()
        if self.mode == "per_batch":  # one brightness draw for the whole batch
            return (x + torch.rand(()) * 0.1).clamp(0, 1)
        if self.mode == "unstable":  # identical images differ, yet every call gives the same batch
            return x * torch.linspace(0.5, 1.0, len(x)).view(-1, 1, 1, 1)
        return (x + torch.rand(len(x), 1, 1, 1) * 0.1).clamp(0, 1)


@pytest.mark.parametrize("mode,contract,message", [
    ("double", "keeps_the_batch", "keep the input's dtype"),
    ("per_batch", "random_per_image", "one random draw per batch"),
    ("unstable", "random_per_image", "yet identical images come out different"),
])
def test_a_broken_augmentation_fails_its_contract(fresh_registry, mode, contract, message):
    fresh_registry.add(clrun.Component("augmentation", "bad/aug", Augmentation), "tests")
    testing.check("augmentation", "bad/aug", mode="ok")
    with pytest.raises(testing.ContractError, match=re.escape(message)):
        testing.check("augmentation", "bad/aug", contract, mode=mode)


# ---------------------------------------------------------------- datasets


class Dataset(torch.utils.data.Dataset):
    def __init__(self, root: str = "", mode: str = "ok"):
        self.mode = mode
        self.classes = ["a", "b"]

    def __len__(self):
        return 4

    def __getitem__(self, i):
        image = torch.full((1, 4, 4), i, dtype=torch.uint8)
        if self.mode == "float":
            return image.float(), 0
        if self.mode == "tensor_label":
            return image, torch.tensor(1)
        if self.mode == "random":
            return torch.randint(0, 256, (1, 4, 4), dtype=torch.uint8), 0
        if self.mode == "sizes":
            return torch.zeros((1, 4 + i, 4), dtype=torch.uint8), 0
        return image, i % 2


@pytest.mark.parametrize("mode,contract,message", [
    ("float", "items", "return a uint8 (C, H, W) tensor"),
    ("tensor_label", "items", "return a Python int"),
    ("sizes", "items", "a batch needs one size"),
    ("random", "deterministic_items", "differs between two reads"),
    ("ok", "missing_root", "an empty root gave a data set of 4 items"),
])
def test_a_broken_dataset_fails_its_contract(fresh_registry, mode, contract, message):
    fresh_registry.add(clrun.Component("dataset", "bad/data", Dataset), "tests")
    with pytest.raises(testing.ContractError, match=re.escape(message)):
        testing.check("dataset", "bad/data", contract, mode=mode)


# ---------------------------------------------------------------- the API


def test_cases_and_checks_name_kind_component_and_contract(fresh_registry):
    fresh_registry.add(clrun.Component("loss", "bad/loss", loss_with(lambda self, out: cosine(out).detach())), "tests")
    fresh_registry.add(clrun.Component("dataset", "bad/data", Dataset), "tests")
    ids = [str(c) for c in testing.cases("bad/*")]
    assert ids == [f"dataset:bad/data:{c}" for c in testing.contracts("dataset")] + [
        f"loss:bad/loss:{c}" for c in testing.contracts("loss")
    ]
    with pytest.raises(testing.ContractError) as info:
        testing.check_loss("bad/loss")
    assert str(info.value).startswith("loss 'bad/loss' breaks its contract: returns_a_loss: the loss does not require grad")
    with pytest.raises(ValueError, match="has no contract 'nonsense'"):
        testing.check("loss", "bad/loss", "nonsense")
    with pytest.raises(ValueError, match="no loss named 'bad/missing' is registered"):
        testing.check_loss("bad/missing")
