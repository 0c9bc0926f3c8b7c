"""Components declare their argument limits (``clrun.Range``) and the registry names them: the validator
refuses a value outside a range at its recipe line, ``clrun.checked`` refuses it on direct construction,
``cl-run components`` shows it. The losses' maths is a tensor function each component calls."""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import pytest
import torch

import clrun
from clrun import ComponentError, Range, checked, loss_kit, plugin_manager
from clrun.recipe import RecipeError
from clrun.testing import step_outputs

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
READABLE = {"views", "masks", "online.features", "online.projections", "online.predictions", "online.tokens",
            "online.token_projections", "online.token_predictions", "target.projections", "target.tokens",
            "target.token_projections", "target.snapshot_tokens"}


# -- Range ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit, base, value, expected", [
    (Range(min=1), int, 0, "must be an integer >= 1, got 0"),
    (Range(min=1), int, True, "must be an integer >= 1, got True"),
    (Range(min=1), int, 2.0, "must be an integer >= 1, got 2.0"),
    (Range(min=0, exclusive_min=True, hint="the paper uses 0.5"), float, 0.0,
     "must be a number > 0 (the paper uses 0.5), got 0.0"),
    (Range(min=0, max=1, exclusive_max=True), float, 1, "must be a number >= 0 and < 1, got 1"),
    (Range(max=1), float, float("nan"), "must be a number <= 1, got nan"),
    (Range(min=0), float, "0.1", "must be a number >= 0, got '0.1'"),
    (Range(min=2, why="one is not a choice"), int, 1, "must be an integer >= 2, got 1: one is not a choice"),
    (Range(min=0, max=1), float, 1.0, None),
    (Range(min=1), int, 1, None),
    (Range(hint="documents only"), str, "anything", None),
])
def test_a_range_says_what_it_refuses(limit, base, value, expected):
    assert limit.violation(value, base) == expected


def test_loss_kit_temperature_range_refuses_a_saturating_temperature():
    limit = loss_kit.temperature_range("SimCLR uses 0.5")
    assert limit.violation(1e-3, float) is None
    assert limit.violation(1e-4, float) == (
        f"must be a number >= 0.001 (SimCLR uses 0.5), got 0.0001: {loss_kit.SATURATES}")


# -- clrun.checked: direct construction ----------------------------------------------------------------
@checked
class Widget:
    def __init__(self, size: Annotated[int, Range(min=1, hint="usually 8")] = 8,
                 rate: Optional[Annotated[float, Range(min=0, max=1)]] = None,
                 mode: Literal["a", "b"] = "a", flag: bool = False) -> None:
        self.size, self.rate, self.mode, self.flag = size, rate, mode, flag


@checked
def make_widget(size: Annotated[int, Range(min=2)] = 2) -> Widget:
    return Widget(size)


@pytest.mark.parametrize("kwargs, argument, message", [
    ({"size": 0}, "size", "Widget: size must be an integer >= 1 (usually 8), got 0"),
    ({"rate": 1.5}, "rate", "Widget: rate must be a number >= 0 and <= 1, got 1.5"),
    ({"mode": "c"}, "mode", "Widget: mode must be one of 'a', 'b', got 'c'"),
    ({"flag": "yes"}, "flag", "Widget: flag must be true or false, got 'yes'"),
])
def test_checked_refuses_a_value_outside_the_signature_naming_the_argument(kwargs, argument, message):
    with pytest.raises(ComponentError) as info:
        Widget(**kwargs)
    assert (str(info.value), info.value.argument) == (message, argument)


def test_loss_kits_older_checks_refuse_as_the_declaration_does():
    """Plugins written before Range call loss_kit's checks: one mechanism, the same message and argument."""
    with pytest.raises(ComponentError) as old:
        loss_kit.int_arg("Widget", "size", 0, 1, " (usually 8)")
    with pytest.raises(ComponentError) as new:
        Widget(size=0)
    assert (str(old.value), old.value.argument) == (str(new.value), new.value.argument)
    with pytest.raises(ComponentError, match=r"^mine/x: lr must be a number >= 0, got -0\.5$"):
        loss_kit.float_arg("mine/x", "lr", -0.5, inclusive=True)
    with pytest.raises(ComponentError, match=r"^mine/x: tau must be a number >= 0\.001 \(SimCLR uses 0\.5\), got 1e-08: the "
                                             r"logits are similarities divided by the temperature"):
        loss_kit.temperature_arg("mine/x", 1e-8, " (SimCLR uses 0.5)", name="tau")
    assert (loss_kit.int_arg("m", "k", 3, 1), loss_kit.float_arg("m", "lr", 2), loss_kit.temperature_arg("m", 0.5)) == (3, 2.0, 0.5)


def test_checked_accepts_what_the_signature_allows_and_names_the_instance():
    widget = Widget(3, None, "b", True)
    assert (widget.size, widget.rate, widget.mode, widget.flag) == (3, None, "b", True)
    assert widget.component_name == "Widget"  # not registered: its class name
    with pytest.raises(ComponentError, match=r"^make_widget: size must be an integer >= 2, got 1$"):
        make_widget(size=1)
    with pytest.raises(TypeError):  # a wrong call is Python's own error
        Widget(unknown=1)


def test_a_built_in_component_built_directly_carries_its_registered_name():
    from clrun.plugins.losses.dcl import DCLWLoss
    from clrun.plugins.losses.ntxent import NTXentLoss

    assert NTXentLoss().component_name == "clrun/ntxent"
    assert DCLWLoss().component_name == "clrun/dclw"
    with pytest.raises(ComponentError) as info:
        NTXentLoss(temperature=0)
    assert str(info.value).startswith("clrun/ntxent: temperature must be a number >= 0.001 (SimCLR uses 0.5; ")
    assert info.value.argument == "temperature"


def test_the_registry_names_every_instance_it_builds(registry, monkeypatch):
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    assert clrun.create("loss", "clrun/dclw").component_name == "clrun/dclw"
    assert clrun.create("projector", "clrun/mlp", in_dim=4, hidden_dim=8, out_dim=4).component_name == "clrun/mlp"
    assert clrun.create("mask", "clrun/random_mask").component_name == "clrun/random_mask"
    # An injected value is checked when the factory runs: the loop's in_dim, against the loss's range.
    with pytest.raises(ComponentError, match=r"^clrun/dino: in_dim must be an integer >= 2 \(the head's output width"):
        clrun.create("loss", "clrun/dino", in_dim=1)


# -- recipes: the validator enforces ranges at the value's line -----------------------------------------
def problems(tmp_path: Path, old: str, new: str, overrides: tuple[str, ...] = ()) -> list[str]:
    path = tmp_path / "recipe.yaml"
    text = TINY.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        clrun.load_recipe(path, overrides)
    return str(info.value).replace(str(path), "RECIPE").splitlines()


def test_a_value_outside_its_range_is_a_recipe_error_at_its_line(tmp_path):
    assert problems(tmp_path, "  temperature: 0.2", "  temperature: 0.0001") == [
        f"RECIPE:31:16: error: loss.temperature: must be a number >= 0.001 (SimCLR uses 0.5; 0.07 to 0.2 is "
        f"common), got 0.0001: {loss_kit.SATURATES}"]
    assert problems(tmp_path, "  out_dim: 32", "  out_dim: 0") == [
        "RECIPE:27:12: error: projector.out_dim: must be an integer >= 1 (SimCLR uses 128), got 0"]


def test_every_value_of_a_schedule_is_checked_at_its_own_key(tmp_path):
    lines = problems(tmp_path, "  temperature: 0.2", "  temperature: {schedule: linear, start: 0.2, end: 0.00001}")
    assert lines == [f"RECIPE:31:52: error: loss.temperature.end: must be a number >= 0.001 (SimCLR uses 0.5; 0.07 "
                     f"to 0.2 is common), got 1e-05: {loss_kit.SATURATES}"]


def test_an_override_outside_the_range_is_blamed_on_the_command_line(tmp_path):
    assert problems(tmp_path, "seed: 0", "seed: 0", ("loss.temperature=-1.0",))[0].startswith(
        "<command line>:1:18: error: loss.temperature: must be a number >= 0.001")


def test_every_problem_of_a_recipe_is_listed_at_once(tmp_path):
    lines = problems(tmp_path, "  temperature: 0.2", "  temperature: 0.0", ("projector.num_layers=0",))
    assert [line.split(": must be")[0] for line in lines] == [
        "RECIPE:31:16: error: loss.temperature", "<command line>:1:22: error: projector.num_layers"]


# -- cl-run components KIND NAME shows the ranges ------------------------------------------------------
def test_components_help_shows_each_arguments_range_and_hint(capsys, registry, monkeypatch):
    from clrun.cli import main

    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    assert main(["components", "loss", "clrun/dino"]) == 0
    out = capsys.readouterr().out
    assert "  teacher_temperature: float  (default 0.04)  a number >= 0.001 (DINO uses 0.04 to 0.07)" in out
    assert "  center_momentum: float  (default 0.9)  a number >= 0 and <= 1 (DINO uses 0.9; 1 turns centering off)" in out
    assert "  sinkhorn_iterations: int  (default 3)  an integer >= 1 (DINOv2 uses 3)" in out
    assert "  centering: Literal['center', 'sinkhorn']  (default 'center')  (DINO: center, DINOv2: sinkhorn)" in out


# -- the losses' tensor functions -----------------------------------------------------------------------
def test_ntxent_is_a_function_of_two_tensors():
    from clrun.plugins.losses.ntxent import NTXentLoss, ntxent

    rng = np.random.default_rng(0)
    z1, z2 = (torch.tensor(rng.normal(size=(4, 6))) for _ in range(2))
    loss, metrics = ntxent(z1, z2, 0.5)
    u = np.concatenate([z1.numpy(), z2.numpy()])
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    logits = u @ u.T / 0.5
    np.fill_diagonal(logits, -np.inf)  # SimCLR's eq. (1): every other vector is a candidate, the other view positive
    expected = np.mean([np.log(np.exp(logits[i]).sum()) - logits[i, (i + 4) % 8] for i in range(8)])
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    module = NTXentLoss(0.5)(step_outputs([z1, z2]))
    assert torch.equal(module["loss"], loss) and metrics.keys() == module.keys() - {"loss"}


def test_dino_and_ibot_compose_the_same_terms():
    from clrun.plugins.losses.dino import DINOLoss, dino
    from clrun.plugins.losses.ibot import ibot_patch_loss

    torch.manual_seed(0)
    student, teacher = [torch.randn(3, 5) for _ in range(3)], [torch.randn(3, 5) for _ in range(2)]
    loss, metrics = dino(student, teacher, [0, 1], 0.04, 0.1, center=torch.zeros(5))
    out = DINOLoss(5).eval()(step_outputs(student, [True, True, False], target_projections=teacher))
    assert torch.equal(out["loss"], loss) and set(metrics) < set(out)
    # The patch term on no hidden patch is 0; on all of them, a cross-entropy of full distributions (> 0).
    s, t = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    none, every = torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    assert ibot_patch_loss([s], [t], [none], torch.zeros(5), 0.04, 0.1).item() == 0.0
    assert ibot_patch_loss([s], [t], [every], torch.zeros(5), 0.04, 0.1).item() > 0.0


def test_ibot_keeps_dinos_buffer_names_for_old_checkpoints():
    from clrun.plugins.losses.ibot import IBOTLoss

    assert set(IBOTLoss(8).state_dict()) == {"center", "patch_center"}


def test_every_built_in_loss_declares_what_it_reads(registry):
    for component in registry.list("loss", "clrun/*"):
        reads = getattr(component.factory, "reads", None)
        assert isinstance(reads, frozenset) and reads and reads <= READABLE, component.name


def test_no_built_in_loss_repeats_its_name_in_an_owner_constant(registry):
    import importlib

    for component in registry.list("loss", "clrun/*"):
        module = importlib.import_module(component.source.partition(":")[0])
        assert not hasattr(module, "OWNER") and "owner" not in vars(component.factory), component.name


# -- the data sets, evaluators and crop declare their limits too ----------------------------------------
def _direct(name: str):
    """A built-in factory by its registered name, called directly (not through the registry)."""
    from clrun.plugins.callbacks.finetune import FineTune
    from clrun.plugins.callbacks.linear_probe import LinearProbe
    from clrun.plugins.datasets.cifar import CIFAR10
    from clrun.plugins.datasets.fashion_mnist import FashionMNIST
    from clrun.plugins.datasets.hf_dataset import hf_dataset
    from clrun.plugins.datasets.image_folder import ImageFolder
    from clrun.plugins.datasets.synthetic import Synthetic
    from clrun.plugins.datasets.webdataset import WebDataset
    from clrun.plugins.augmentations.random_resized_crop import RandomResizedCrop

    data = Synthetic(8, 2, size=8)
    return {"clrun/image_folder": ImageFolder, "clrun/webdataset": WebDataset, "clrun/hf_dataset": hf_dataset,
            "clrun/fashion_mnist": FashionMNIST, "clrun/cifar10": lambda **kw: CIFAR10("/nowhere", **kw),
            "clrun/linear_probe": lambda **kw: LinearProbe(data, data, **kw),
            "clrun/finetune": lambda **kw: FineTune(data, data, **kw),
            "clrun/random_resized_crop": lambda **kw: RandomResizedCrop(8, **kw)}[name]


@pytest.mark.parametrize("name, kwargs, argument, message", [
    ("clrun/image_folder", {"size": 0}, "size", "size must be an integer >= 1, got 0"),
    ("clrun/image_folder", {"channels": 2}, "channels", "channels must be one of 1, 3, got 2"),
    ("clrun/image_folder", {"labels": "folders"}, "labels",
     "labels must be one of 'auto', 'subfolders', 'none', got 'folders'"),
    ("clrun/webdataset", {"shuffle": -1}, "shuffle",
     "shuffle must be an integer >= 0 (images in the shuffle buffer; 0: the shards' order), got -1"),
    ("clrun/webdataset", {"epoch_size": 0}, "epoch_size",
     "epoch_size must be an integer >= 1 (default: the count in the shards' index.json), got 0"),
    ("clrun/hf_dataset", {"channels": 4}, "channels", "channels must be one of 1, 3, got 4"),
    ("clrun/hf_dataset", {"streaming": "yes"}, "streaming", "streaming must be true or false, got 'yes'"),
    ("clrun/fashion_mnist", {"split": "val"}, "split", "split must be one of 'train', 'test', got 'val'"),
    ("clrun/cifar10", {"subset": 0}, "subset", "subset must be an integer >= 1 (null: the whole split), got 0"),
    ("clrun/linear_probe", {"lr": 0.0}, "lr", "lr must be a number > 0, got 0.0"),
    ("clrun/finetune", {"head_init": "zeros"}, "head_init", "head_init must be one of 'probe', 'random', got 'zeros'"),
    ("clrun/finetune", {"branches": ["backbone", "backbone"]}, "branches",  # relates the elements: the code's own
     "branches must name each of 'backbone' and 'projector' at most once, and at least one of them; got "
     "['backbone', 'backbone']"),
    ("clrun/random_resized_crop", {"scale": (0.9, 0.1)}, "scale",  # low <= high: the code's own check
     "scale must be [low, high] with 0 < low <= high <= 1, got [0.9, 0.1]"),
    ("clrun/random_resized_crop", {"align_corners": 1}, "align_corners", "align_corners must be true or false, got 1"),
], ids=lambda value: value if isinstance(value, str) and value.startswith("clrun/") else None)
def test_built_in_components_refuse_what_their_signatures_declare(name, kwargs, argument, message):
    """Built directly: clrun.checked enforces the signature (before any file is looked at), and the checks
    the code keeps name their argument too."""
    with pytest.raises(ComponentError) as info:
        _direct(name)(**kwargs)
    assert (str(info.value), info.value.argument) == (f"{name}: {message}", argument)


def test_a_data_set_limit_is_a_recipe_error_at_its_line(tmp_path):
    lines = problems(tmp_path, "    name: clrun/synthetic\n    num_images: 64",
                     "    name: clrun/image_folder\n    size: 0\n    channels: 2\n    on_error: ignore")
    assert lines == ["RECIPE:8:11: error: data.dataset.size: must be an integer >= 1, got 0",
                     "RECIPE:9:15: error: data.dataset.channels: expected one of 1, 3, got number 2",
                     "RECIPE:10:15: error: data.dataset.on_error: expected one of 'stop', 'skip', got string 'ignore'"]


# -- the rule: no built-in factory hand-checks what its signature can declare ---------------------------
RAISED = {"ComponentError", "ValueError", "TypeError", "UserError"}


def _operand_is_constant(node: ast.AST) -> bool:
    """A literal (``1``, ``-1.0``, ``"stop"``), a tuple/list/set of them, or a module constant (``FILES``)."""
    if isinstance(node, ast.Constant):
        return node.value is not None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _operand_is_constant(node.operand)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_operand_is_constant(e) for e in node.elts)
    return isinstance(node, ast.Name) and node.id.isupper()


def _declarable(test: ast.AST, parameters: set[str]) -> str | None:
    """The first part of an ``if`` condition that compares exactly one parameter with constants
    (``size < 1``, ``not 0 < p <= 1``, ``channels not in (1, 3)``) or asks whether it is a bool: a range,
    a choice or a ``bool`` the signature could declare. ``is None`` tests are not limits."""
    if isinstance(test, ast.BoolOp):
        return next((found for value in test.values if (found := _declarable(value, parameters))), None)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        found = _declarable(test.operand, parameters)
        return ast.unparse(test) if found and not isinstance(test.operand, ast.BoolOp) else found
    if isinstance(test, ast.Compare) and not any(isinstance(op, (ast.Is, ast.IsNot)) for op in test.ops):
        operands = [test.left, *test.comparators]
        named = [o for o in operands if isinstance(o, ast.Name) and o.id in parameters]
        if len(named) == 1 and all(o is named[0] or _operand_is_constant(o) for o in operands):
            return ast.unparse(test)
    if (isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "isinstance"
            and len(test.args) == 2 and isinstance(test.args[0], ast.Name) and test.args[0].id in parameters
            and ast.unparse(test.args[1]) == "bool"):
        return ast.unparse(test)
    return None


def hand_checked_limits(function) -> list[str]:
    """``file:line: condition`` for every ``raise`` of a bad-value error under an ``if`` that only compares one
    of ``function``'s parameters with constants."""
    function = inspect.unwrap(function)
    lines, first = inspect.getsourcelines(function)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    definition = tree.body[0]
    arguments = definition.args
    parameters = {a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)} - {"self"}
    found = []
    for node in ast.walk(definition):
        raises = isinstance(node, ast.If) and any(
            isinstance(s, ast.Raise) and isinstance(s.exc, ast.Call) and ast.unparse(s.exc.func).split(".")[-1] in RAISED
            for s in node.body)
        condition = _declarable(node.test, parameters) if raises else None
        if condition:
            where = Path(inspect.getsourcefile(function)).relative_to(Path(__file__).parents[2])
            found.append(f"{where}:{first + node.lineno - 1}: if {condition}")
    return found


def built_in_factories(registry) -> dict[str, object]:
    """Every built-in factory's own code: a function, or the ``__init__`` of each plugin class in a class's
    MRO; the timm namespace's factory (``timm/*`` is one function of the model name) included."""
    components = registry.list(pattern="clrun/*") + [registry.get("backbone", "timm/test_resnet")]
    functions: dict[str, object] = {}
    for component in components:
        factory = component.factory
        factory = getattr(factory, "func", factory)  # functools.partial
        if inspect.isclass(factory):
            for cls in factory.__mro__:
                init = vars(cls).get("__init__")
                if init is not None and cls.__module__.startswith("clrun.plugins"):
                    functions[f"{cls.__module__}.{cls.__qualname__}.__init__"] = init
        elif getattr(factory, "__module__", "").startswith("clrun.plugins"):
            functions[f"{factory.__module__}.{factory.__qualname__}"] = factory
    return functions


def test_no_built_in_factory_hand_checks_a_limit_its_signature_can_declare(registry):
    """``if lr <= 0: raise ...`` in a constructor is a ``Range`` the signature should declare (the recipe
    validator then reports it at its line, ``cl-run components`` shows it); ``if mode not in ("a", "b")`` is a
    ``Literal``; ``if not isinstance(flag, bool)`` is a ``bool``. What relates arguments (``low <= high``) or
    checks a pair's elements stays in code, and this scan leaves it alone."""
    functions = built_in_factories(registry)
    assert "clrun.plugins.datasets.image_folder.ImageFolder.__init__" in functions
    assert "clrun.plugins.backbones.timm_backbone.create_timm_backbone" in functions
    offenders = [line for function in functions.values() for line in hand_checked_limits(function)]
    assert offenders == [], "\n".join(offenders)


def test_the_scan_finds_a_hand_checked_limit():
    def factory(size: int = 1, low: float = 0.0, high: float = 1.0, mode: str = "a", flag: bool = False):
        if low > high:  # relates two arguments: stays
            raise ComponentError("low > high")
        if mode not in ("a", "b") or not isinstance(flag, bool):
            raise ComponentError("mode")
        if size is not None and not 1 <= size <= 8:
            raise ValueError("size")

    assert [line.split(": ", 1)[1] for line in hand_checked_limits(factory)] == [
        "if mode not in ('a', 'b')", "if not 1 <= size <= 8"]
