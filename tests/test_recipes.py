"""Every recipe shipped in ``recipes/`` passes ``cl-run check``: it validates, builds on the CPU and
takes one optimizer step on a tiny batch (random images of the right shape where the data set is not
on this machine, e.g. CIFAR-10 or an ImageNet folder). Discovered, so a new recipe is checked too."""

from __future__ import annotations

from pathlib import Path

import pytest

from clrun import plugin_manager
from clrun.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_the_recipes_are_found():
    names = {p.stem for p in RECIPES}
    methods = ("simclr", "mocov2", "byol", "simsiam", "swav", "barlow_twins", "vicreg", "nnclr", "mocov3", "dino")
    for method in methods:  # a CPU Fashion-MNIST recipe and a CIFAR-10 ResNet-18 recipe for each method
        assert f"{method}_cifar10_r18" in names
        assert method == "simclr" or f"{method}_fmnist" in names
    assert "quickstart" in names  # SimCLR's Fashion-MNIST recipe
    assert {"dcl_fmnist", "dclw_fmnist"} <= names  # solo-learn has no DCL settings for CIFAR-10
    assert {"simclr_r50", "dino_vits16", "mocov3_vits16", "lejepa_vits16", "ibot_vits16"} <= names  # ImageNet GPU recipes
    assert {"lejepa_fmnist", "ibot_fmnist"} <= names


def cpu_sized(recipe: Path) -> bool:
    return recipe.stem == "quickstart" or recipe.stem.endswith("_fmnist")


# The GPU recipes (CIFAR-10, ImageNet: ResNet-18/50 and ViT-S builds take seconds each) are checked in
# the slow suite, which CI runs; the CPU ones in every run.
@pytest.mark.parametrize("recipe", [pytest.param(r, marks=[] if cpu_sized(r) else [pytest.mark.slow]) for r in RECIPES],
                         ids=lambda p: p.name)
def test_shipped_recipe_passes_check(recipe, registry, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    monkeypatch.chdir(tmp_path)  # relative data roots resolve to nothing here; check writes nothing
    code = main(["check", str(recipe)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1] == f"{recipe}: OK"
    assert list(tmp_path.iterdir()) == []


# The ImageNet ViT recipes name ViT-S/16; one recipe line makes them a ViT-B/16 (86M parameters, built and
# stepped on the CPU: slow).
@pytest.mark.slow
@pytest.mark.parametrize("stem", ["lejepa_vits16"])  # one is enough to show the swap; each costs seconds
def test_vit_recipes_pass_check_with_another_vit_size(stem, registry, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    monkeypatch.chdir(tmp_path)
    code = main(["check", str(REPO / "recipes" / f"{stem}.yaml"), "backbone.name=timm/vit_base_patch16_224"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "backbone: timm/vit_base_patch16_224 (85.8" in out
