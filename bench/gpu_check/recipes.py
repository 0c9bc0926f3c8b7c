"""The shipped recipes, and the overrides that turn each into a short run on data the GPU machine has.

Every run goes through cl-run's public API: ``clrun.load_recipe(path, overrides)`` then ``clrun.train``. The
overrides only use recipe keys, so what runs is the shipped recipe with its sizes changed, nothing else:

* the ImageNet recipes (``clrun/image_folder``) read ``clrun/synthetic`` images of the recipe's 256 px
  (striped, labeled: the evaluators have classes to find), or ``bench/noise_images`` where content does
  not matter and generating 256 px stripes would take longer than the measurement;
* the Fashion-MNIST recipes read a subset of Fashion-MNIST (the payload's copy on the GPU machine);
* the CIFAR recipes read ``clrun/synthetic`` 32 px images (CIFAR-10 is 170 MB, over the payload's 64 MiB);
* at the CPU scale, the ImageNet recipes' models and crops are shrunk (``tiny``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import yaml

from gpu_check.bootstrap import REPO
from gpu_check.components import NOISE, PROBE
from gpu_check.context import Context

RECIPES = REPO / "recipes"
# Fashion-MNIST scenes count as Fashion-MNIST: their short runs train on items (upsampled to the recipe's crops)
# and are scored on items, which the machine has in the same package; the scene evaluators run on CPUs in CI.
DATASET_KINDS = {"clrun/image_folder": "imagenet", "clrun/fashion_mnist": "fmnist", "clrun/fmnist_scenes": "fmnist",
                 "clrun/cifar10": "cifar", "clrun/cifar100": "cifar"}
SUFFIXES = ("_fmnist", "_cifar10_r18", "_cifar100_r18")
# The synthetic images' classes in the evaluators' data (any number works; few keep a tiny bank balanced).
SYNTHETIC_CLASSES = 4


def flow(value: Any) -> str:
    """A value as an override's right-hand side: JSON is YAML's flow style."""
    return json.dumps(value)


@dataclass(frozen=True)
class Shipped:
    """A recipe file of ``recipes/``, as written."""

    path: Path

    @cached_property
    def raw(self) -> dict[str, Any]:
        return yaml.safe_load(self.path.read_text())

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def kind(self) -> str:
        return DATASET_KINDS.get(self.raw["data"]["dataset"]["name"], "other")

    @property
    def method(self) -> str:
        """The method a recipe trains, from its file name: ``swav_fmnist`` and ``swav_cifar10_r18`` are both swav."""
        for suffix in SUFFIXES:
            if self.name.endswith(suffix):
                return self.name[: -len(suffix)]
        return self.name

    @property
    def image_size(self) -> int:
        """The side of the images the recipe's data set delivers (the ImageNet recipes resize to 256 px)."""
        return {"imagenet": int(self.raw["data"]["dataset"].get("size", 256)), "cifar": 32}.get(self.kind, 28)


@lru_cache(maxsize=1)
def shipped() -> dict[str, Shipped]:
    """Read once per process: parsing every recipe's YAML takes a second."""
    return {p.stem: Shipped(p) for p in sorted(RECIPES.glob("*.yaml"))}


def smoke_selection(recipes: dict[str, Shipped]) -> list[Shipped]:
    """Every method once at least: the ImageNet recipes first (the GPU's own paths: 224 px, multi-crop, big
    ViTs, LARS), then every Fashion-MNIST recipe, then the CIFAR recipes of a method no Fashion-MNIST recipe
    trains (their other recipes repeat a Fashion-MNIST recipe's method with a ResNet-18)."""
    by_kind = {kind: [r for r in recipes.values() if r.kind == kind]
               for kind in ("imagenet", "fmnist", "other", "cifar")}
    covered = {r.method for r in by_kind["fmnist"]}
    return [*by_kind["imagenet"], *by_kind["fmnist"], *by_kind["other"],
            *(r for r in by_kind["cifar"] if r.method not in covered)]


@dataclass(frozen=True)
class Planned:
    """One training run of a section: ``recipe`` with ``overrides``, at ``batch`` images a step, with
    ``callbacks`` (the evaluators) besides the check's probe."""

    item: str
    recipe: Shipped
    batch: int
    overrides: tuple[str, ...]
    callbacks: tuple[dict[str, Any], ...] = ()

    def all_overrides(self, run_dir: str) -> list[str]:
        """What ``clrun.load_recipe`` gets: the overrides, the callbacks with the probe last, the run folder."""
        entries = [*self.callbacks, {"name": PROBE}]
        return [*self.overrides, f"callbacks={flow(entries)}", f"run.dir={run_dir}", "run.name=check"]


def short_run(item: str, recipe: Shipped, ctx: Context, steps: int, batch: int, images: int, noise: bool,
              extra: list[str], callbacks: list[dict[str, Any]] = ()) -> Planned:
    """``recipe`` for ``steps`` bf16 steps of ``batch`` images on ``ctx``'s device, from ``images`` images the
    machine has (``noise``: see ``training_data``), shrunk at a tiny scale, then the ``extra`` overrides."""
    size = 32 if ctx.scale.tiny and recipe.kind == "imagenet" else None
    overrides = [*run_settings(ctx.device.type, steps, batch),
                 *training_data(recipe, images, ctx.fmnist_root, size, noise),
                 *(tiny(recipe) if ctx.scale.tiny else []),
                 # Random weights instead of the recipe's init: (the GPU machine reaches no Hub and has no earlier
                 # run's export; a shrunk model would not take them): the training path is what is measured.
                 *(["init=null"] if recipe.raw.get("init") else []), *extra]
    return Planned(item, recipe, batch, tuple(overrides), tuple(callbacks))


def run_settings(device: str, steps: int, batch: int) -> list[str]:
    """A short bf16 run: ``steps`` optimizer steps of ``batch`` images, data in the main process, the
    checkpoint only at the end (always written), no progress bar."""
    return [f"train.device={device}", f"train.max_steps={steps}", f"data.batch_size={batch}", "data.num_workers=0",
            "train.precision=bf16", "train.progress=false", "train.checkpoint_every=1000"]


def fmnist(split: str, images: int, root: str | None) -> dict[str, Any]:
    return {"name": "clrun/fashion_mnist", "split": split, "subset": images, **({"root": root} if root else {})}


def synthetic(images: int, size: int, seed: int) -> dict[str, Any]:
    return {"name": "clrun/synthetic", "num_images": images, "size": size, "channels": 3,
            "num_classes": SYNTHETIC_CLASSES, "seed": seed}


def training_data(recipe: Shipped, images: int, fmnist_root: str | None, size: int | None = None,
                  noise: bool = False) -> list[str]:
    """The recipe's training data replaced by ``images`` images the machine has (``size``: their side, default
    the recipe's; ``noise``: ``bench/noise_images``, for measurements that do not look at the content)."""
    side = size or recipe.image_size
    if recipe.kind == "fmnist":
        return [f"data.dataset={flow(fmnist('train', images, fmnist_root))}"]
    if noise:
        return [f"data.dataset={flow({'name': NOISE, 'num_images': images, 'size': side})}"]
    if recipe.kind in ("imagenet", "cifar"):
        return [f"data.dataset={flow(synthetic(images, side, seed=0))}"]
    return []


def evaluators(recipe: Shipped, bank: int, test: int, fmnist_root: str | None) -> list[dict[str, Any]]:
    """kNN, linear probe (2 epochs) and online probe, on small labeled banks of the recipe's kind of data."""
    if recipe.kind == "fmnist":
        train_set, test_set = fmnist("train", bank, fmnist_root), fmnist("test", test, fmnist_root)
    else:
        # Small images: the evaluators resize them to the global views' size, as they would real ones.
        train_set, test_set = synthetic(bank, 32, seed=1), synthetic(test, 32, seed=2)
    return [{"name": "clrun/knn", "k": 5, "train": train_set, "test": test_set},
            {"name": "clrun/linear_probe", "epochs": 2, "train": train_set, "test": test_set},
            {"name": "clrun/online_probe", "test": test_set}]


def tiny(recipe: Shipped) -> list[str]:
    """At the CPU scale: any ResNet a resnet10t; an ImageNet recipe's crops at 32 px (global) and 16 px
    (local) with 3 px blurs, its ViT one block of width 32 on 4 px patches, its heads at most 64 wide. Every
    layer type and code path of the recipe, at a cost a 2-core CI can pay."""
    raw, out = recipe.raw, []
    backbone = raw["backbone"]["name"]
    if "resnet" in backbone and backbone != "timm/resnet10t":
        out.append("backbone.name=timm/resnet10t")
        if "small_image_stem" in raw["backbone"]:  # resnet10t's deep stem has no such variant
            out.append("backbone.small_image_stem=false")
    if recipe.kind != "imagenet":
        return out
    for i, view in enumerate(raw["views"]):
        for j, transform in enumerate(view["transforms"]):
            if transform["name"].endswith("RandomResizedCrop"):
                side = 32 if transform["size"][0] >= 128 else 16
                out.append(f"views.{i}.transforms.{j}.size=[{side}, {side}]")
            elif transform["name"].endswith("RandomGaussianBlur"):
                out.append(f"views.{i}.transforms.{j}.kernel_size=[3, 3]")  # 23 px kernels dominate a 32 px view
    if "vit" in backbone:
        out += ["backbone.img_size=32", "backbone.model_args.patch_size=4", "backbone.model_args.embed_dim=32",
                "backbone.model_args.depth=1", "backbone.model_args.num_heads=2"]
    for section in ("projector", "predictor"):
        for key in ("hidden_dim", "out_dim", "bottleneck_dim"):
            if (raw.get(section) or {}).get(key, 0) > 64:
                out.append(f"{section}.{key}=64")
    head = (raw.get("masking") or {}).get("head") or {}
    out += [f"masking.head.{key}={value}" for key, value in (("embed_dim", 32), ("depth", 1), ("num_heads", 2))
            if key in head]
    return out
