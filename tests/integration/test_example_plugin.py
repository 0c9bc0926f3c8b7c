"""The example third-party plugin (examples/clrun-plugin-example), installed like a user would.

The test environment must have it installed (tox and CI run
``pip install ./examples/clrun-plugin-example``); without it these tests FAIL, saying how to install
it: a skipped plugin test would hide a broken entry point.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import clrun
from clrun import plugin_manager, testing
from clrun.cli import main

DIST = "clrun-plugin-example"
pytestmark = pytest.mark.e2e
LOSS = "example/align_uniform"
TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
AUGMENTATION = "example/RandomGaussianNoiseClamp"
INSTALL_HINT = (
    f"the example plugin distribution {DIST!r} is not installed in this environment; install it with "
    "`pip install ./examples/clrun-plugin-example` (for development: "
    "`.venv/bin/pip install --no-deps -e examples/clrun-plugin-example`), as tox and CI do"
)


@pytest.fixture(autouse=True)
def example_installed(monkeypatch):
    """Fail (not skip) without the installed plugin; load the registry fresh, with autoloading on."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    entry_points = [ep for ep in dist.entry_points if ep.group == plugin_manager.ENTRY_POINT_GROUP]
    if [(ep.name, ep.value) for ep in entry_points] != [("example", "clrun_plugin_example.plugin")]:
        pytest.fail(f"{DIST} is installed but its `clrun` entry points are {entry_points}; reinstall it. {INSTALL_HINT}",
                    pytrace=False)
    monkeypatch.delenv(plugin_manager.ENV_NO_AUTOLOAD, raising=False)
    monkeypatch.delenv(plugin_manager.ENV_STRICT, raising=False)
    plugin_manager.set_default_registry(None)
    yield dist
    plugin_manager.set_default_registry(None)


# -- discovery ----------------------------------------------------------------------------------------
def test_components_offers_the_loss_and_augmentation_from_the_distribution(example_installed):
    (loss,) = [c for c in clrun.components("loss") if c.name == LOSS]
    assert DIST in loss.provider and example_installed.version in loss.provider
    assert loss.summary
    (aug,) = [c for c in clrun.components("augmentation") if c.name == AUGMENTATION]
    assert DIST in aug.provider
    assert [c.name for c in clrun.components(pattern="example/*")] == [AUGMENTATION, LOSS]
    registry = plugin_manager.default_registry()
    assert not [b for b in registry.broken if b.dist == DIST], registry.broken
    (info,) = [p for p in registry.plugins if p.dist == DIST]
    assert (info.name, info.version, info.components) == ("example", example_installed.version, 2)


def test_plugin_module_uses_only_the_public_api():
    """A third-party plugin imports ``clrun`` and uses its documented names, nothing deeper."""
    import ast
    import pathlib

    import clrun_plugin_example

    allowed = {"hookimpl", "Component", "StepOutputs", "Nested", "UserError", "loss_kit", "Range", "checked"}
    for path in pathlib.Path(clrun_plugin_example.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clrun":
                assert node.module == "clrun" and {a.name for a in node.names} <= allowed, f"{path.name}: {ast.dump(node)}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name == "clrun" or not alias.name.startswith("clrun."), f"{path.name}: imports {alias.name}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "clrun":
                assert node.attr in allowed, f"{path.name}: uses clrun.{node.attr}"


def test_cli_plugins_lists_the_example(capsys, example_installed):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if DIST in line]
    assert len(lines) == 1, out
    assert lines[0].startswith("ok") and "example" in lines[0] and example_installed.version in lines[0]
    assert "2 components" in lines[0]


def test_cli_components_lists_the_loss(capsys):
    assert main(["components", "loss"]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if LOSS in line]
    assert DIST in line
    assert main(["components", "augmentation", "example/*"]) == 0
    assert AUGMENTATION in capsys.readouterr().out


def test_no_plugins_flag_hides_the_example(capsys):
    assert main(["--no-plugins", "components", "loss"]) == 0
    assert LOSS not in capsys.readouterr().out


# -- the contracts, as the plugin's own tests would run them ------------------------------------------
# Collected from the registry when this module is imported: every contract of every example/ component.
EXAMPLE_CASES = testing.cases("example/*")


def test_contract_cases_cover_both_components():
    assert {(c.kind, c.name) for c in EXAMPLE_CASES} == {("loss", LOSS), ("augmentation", AUGMENTATION)}
    assert len(EXAMPLE_CASES) == len(testing.contracts("loss")) + len(testing.contracts("augmentation"))


@pytest.mark.parametrize("case", EXAMPLE_CASES, ids=str)
def test_example_component_keeps_its_contract(case):
    case.check()


# -- the loss ----------------------------------------------------------------------------------------
def reference_align_uniform(z1: np.ndarray, z2: np.ndarray, alpha: float, t: float, weight: float):
    """Wang & Isola (2020), written out in float64 NumPy from the formulas."""
    x = z1 / np.sqrt((z1 ** 2).sum(axis=1, keepdims=True))
    y = z2 / np.sqrt((z2 ** 2).sum(axis=1, keepdims=True))
    align = np.mean(np.sqrt(((x - y) ** 2).sum(axis=1)) ** alpha)

    def uniform(v):
        n = len(v)
        values = [np.exp(-t * np.sum((v[i] - v[j]) ** 2)) for i in range(n) for j in range(i + 1, n)]
        return np.log(np.mean(values))

    unif = (uniform(x) + uniform(y)) / 2
    return align + weight * unif, align, unif


def outputs(*views, is_global=None):
    return clrun.StepOutputs(features=[v.clone() for v in views], projections=list(views),
                             is_global=list(is_global) if is_global is not None else [True] * len(views))


@pytest.mark.parametrize("alpha, t, weight", [(2.0, 2.0, 1.0), (1.5, 3.0, 0.25), (1.0, 0.5, 0.0)])
def test_loss_matches_numpy(alpha, t, weight):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(12, 7, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(12, 7, generator=g, dtype=torch.float64)
    local = torch.randn(12, 7, generator=g, dtype=torch.float64)  # a local view: ignored
    loss_fn = clrun.create("loss", LOSS, alpha=alpha, t=t, uniformity_weight=weight)
    out = loss_fn(outputs(z1, local, z2, is_global=[True, False, True]))
    assert set(out) == {"loss", "align", "uniform"}
    expected = reference_align_uniform(z1.numpy(), z2.numpy(), alpha, t, weight)
    for key, value in zip(("loss", "align", "uniform"), expected):
        assert out[key].ndim == 0
        assert out[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_loss_defaults_and_float32_and_gradient():
    loss_fn = clrun.create("loss", LOSS)  # alpha=2, t=2, weight 1
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 8, generator=g, requires_grad=True)
    z2 = torch.randn(16, 8, generator=g, requires_grad=True)
    out = loss_fn(outputs(z1, z2))
    expected = reference_align_uniform(z1.detach().double().numpy(), z2.detach().double().numpy(), 2.0, 2.0, 1.0)
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(expected[0], rel=1e-5, abs=1e-6)
    out["loss"].backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0
    assert not out["align"].requires_grad and not out["uniform"].requires_grad


def test_loss_runs_in_float32_under_autocast():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    expected = reference_align_uniform(z1.double().numpy(), z2.double().numpy(), 2.0, 2.0, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = clrun.create("loss", LOSS)(outputs(z1.bfloat16(), z2.bfloat16()))
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(expected[0], rel=2e-2)


def test_loss_uniformity_stays_finite_for_a_large_t():
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    out = clrun.create("loss", LOSS, t=500.0)(outputs(z, z.flip(0)))
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("n_global", [1, 3])
def test_loss_needs_exactly_two_global_views(n_global):
    loss_fn = clrun.create("loss", LOSS)
    z = torch.randn(4, 3)
    with pytest.raises(clrun.UserError, match="exactly 2 global views"):
        loss_fn(outputs(*[z] * n_global))


def test_loss_rejects_bad_settings():
    """The limits the plugin declares in its signature (clrun.Range) are enforced for a recipe entry
    (clrun.create validates like a recipe) and, through clrun.checked, on direct construction."""
    from clrun_plugin_example import AlignUniformLoss

    where = f"clrun.create('loss', {LOSS!r})"
    with pytest.raises(clrun.ComponentError) as info:
        clrun.create("loss", LOSS, alpha=0)
    assert (str(info.value), info.value.argument) == (
        f"{where}: alpha: must be a number > 0 (the paper uses 2), got 0.0", "alpha")
    with pytest.raises(clrun.ComponentError) as info:
        AlignUniformLoss(uniformity_weight=-1.0)
    assert (str(info.value), info.value.argument) == (
        f"{LOSS}: uniformity_weight must be a number >= 0 (the paper's lambda is 1), got -1.0", "uniformity_weight")
    with pytest.raises(clrun.ComponentError, match="temperature"):  # unknown key, listed with what it takes
        clrun.create("loss", LOSS, temperature=0.1)
    assert AlignUniformLoss().reads == {"online.projections"}
    assert AlignUniformLoss().component_name == LOSS  # the name it is registered under, found by its path


# -- the augmentation ----------------------------------------------------------------------------------
def test_augmentation_noises_a_random_subset_and_clamps():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    y = clrun.create("augmentation", AUGMENTATION, std=0.5, p=0.5)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    changed = (y != x).flatten(1).any(dim=1)
    assert 10 < int(changed.sum()) < 54, "each image is noised independently with probability p"
    assert torch.equal(clrun.create("augmentation", AUGMENTATION, p=0.0)(x), x)
    assert (clrun.create("augmentation", AUGMENTATION, std=0.1, p=1.0)(x) != x).flatten(1).any(dim=1).all()
    with pytest.raises(clrun.ComponentError) as info:
        clrun.create("augmentation", AUGMENTATION, p=1.5)
    assert str(info.value) == (f"clrun.create('augmentation', {AUGMENTATION!r}): p: must be a number >= 0 and <= 1 "
                               f"(per image), got 1.5")
    from clrun_plugin_example import RandomGaussianNoiseClamp

    with pytest.raises(clrun.ComponentError) as info:
        RandomGaussianNoiseClamp(std=float("nan"))
    assert (str(info.value), info.value.argument) == (
        f"{AUGMENTATION}: std must be a number >= 0 (in units of the [0, 1] intensity range), got nan", "std")


# -- a whole run ---------------------------------------------------------------------------------------
RECIPE = """
seed: 0
data:
  dataset:
    name: clrun/synthetic
{dataset_settings}
  batch_size: 16
  num_workers: 0
views:
  - name: global
    count: 2
    transforms:
      - name: kornia/RandomResizedCrop
        size: [32, 32]
        scale: [0.5, 1.0]
      - name: example/RandomGaussianNoiseClamp
        std: 0.1
        p: 0.5
backbone:
  name: timm/test_resnet
projector:
  name: clrun/mlp
  hidden_dim: 32
  out_dim: 16
loss:
  name: example/align_uniform
optimizer:
  name: torch/SGD
  lr: 0.05
train:
  epochs: 2
  device: cpu
  progress: false
run:
  dir: {run_dir}
  name: example
"""

# clrun/synthetic: 64 generated RGB images of 32x32 (4 batches of 16 per epoch).
SYNTHETIC_SETTINGS = {"num_images": 64, "num_classes": 4, "size": 32, "channels": 3}


def test_recipe_with_the_example_components_trains(tmp_path):
    settings = "".join(f"    {k}: {v}\n" for k, v in SYNTHETIC_SETTINGS.items()).rstrip("\n")
    path = tmp_path / "example.yaml"
    path.write_text(RECIPE.format(dataset_settings=settings, run_dir=tmp_path / "runs"), encoding="utf-8")
    run = clrun.train(clrun.load_recipe(path))
    assert run.directory == tmp_path / "runs" / "example"
    summary = json.loads((run.directory / "summary.json").read_text())
    assert np.isfinite(summary["loss"])
    records = [json.loads(line) for line in (run.directory / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "align" in r and "uniform" in r]
    assert epochs, "the loss's extra metrics (align, uniform) are logged"
    assert "example/align_uniform" in (run.directory / "recipe.yaml").read_text()


def test_a_plugin_loss_follows_a_schedule_and_its_run_takes_parameter_groups(tmp_path, no_report):
    """What a third-party component gets from the core without a line of its own: the loss keeps its
    setting as self.uniformity_weight, so a recipe can schedule it; a params: rule freezes the projector."""
    recipe = clrun.load_recipe(TINY, [
        f"loss={{name: {LOSS}, uniformity_weight: {{schedule: linear, start: 0.0, end: 1.0, until_epoch: 1}}}}",
        "params={groups: [{match: [projector.*], frozen_epochs: 1}]}",
        f"run.dir={tmp_path}", "run.name=r", "train.epochs=2", "health.enabled=false"])
    run = clrun.train(recipe)
    lines = run.folder.metrics.read_text(encoding="utf-8").splitlines()
    weights = [r["loss.uniformity_weight"] for r in map(json.loads, lines) if r["kind"] == "step"]
    assert weights == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])
    assert run.parts.loss_fn.uniformity_weight == 1.0
    frozen = [g for g in run.parts.optimizer.param_groups if g.get("frozen_steps")]
    assert frozen and all(g["frozen_steps"] == 4 for g in frozen)
