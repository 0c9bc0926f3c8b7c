"""The one setup path: what ``train``, ``check`` and ``eval`` do before their first step.

Seeds, threads, device, data set, a few example images, and the parts, in that order, the same way for
every command: a check that passes builds exactly what training builds. The parts are built in three
stages, each its own module: the model (``build``), placed on the device and the run's processes
(``parallel``), then what updates it (``optimization``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clrun import distributed
from clrun.errors import DataNotFoundError, UserError
from clrun.recipe import Recipe
from clrun.streams import Stream, images_in
from clrun.training.model.build import build_model
from clrun.training.data import make_loader, stacked
from clrun.training.device_settings import apply_device_settings
from clrun.training.optim.optimization import build_optimization
from clrun.training.parallel.parallelize import parallelize
from clrun.training.parts import Parts, assemble
from clrun.training.seeding import seed_everything
from clrun.weights.plan import plan_init

Purpose = Literal["train", "check", "eval"]
EXAMPLE_SIZE = 4  # images to measure view sizes and head widths with (and `check`'s one batch)


@dataclass
class Setup:
    """What ``prepare`` built. ``loader`` and ``sampler_rng`` exist for training only; ``dataset`` is
    None when ``check`` found no data files and goes on with random images (``data_note`` says so)."""

    recipe: Recipe
    device: torch.device
    dataset: Optional[Dataset]
    example: Tensor  # uint8 (B, C, H, W): a few images of the data set
    parts: Parts
    steps_per_epoch: int
    loader: Optional[DataLoader] = None
    sampler_rng: Optional[torch.Generator] = None
    data_note: str = ""
    example_places: Optional[Tensor] = None  # the example images' places, when the data set letterboxes them


def prepare(recipe: Recipe, purpose: Purpose, device: torch.device | None = None, initialize: bool = True) -> Setup:
    """Build ``recipe`` for ``purpose``: ``train`` (the loader sets the schedule's length), ``check``
    (on the CPU, one batch; random images when the data files are absent) or ``eval`` (no loader).

    ``device`` defaults to the CPU for ``check`` and to ``train.device`` otherwise. ``initialize``: load the
    recipe's ``init:`` weights (a new run; ``check`` shows the plan without downloading; ``eval`` and a
    resumed run load a checkpoint instead)."""
    seed_everything(recipe.seed)  # the same on every rank: every rank builds the same initial weights
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    if device is None:
        device = torch.device("cpu") if purpose == "check" else resolve_device(recipe.train.device)
    apply_device_settings(recipe.train, device)
    # Data first: a missing data root must stop the run before anything else is built or written.
    dataset, (example, example_places), note = _data(recipe, purpose)
    loader, sampler_rng, steps_per_epoch = None, None, 1
    if purpose == "check" and dataset is not None:  # what training would take: the schedules shown span it
        batches = images_in(dataset) / recipe.data.batch_size
        steps_per_epoch = max(int(batches) if recipe.data.drop_last else math.ceil(batches), 1)
    if purpose == "train":
        sampler_rng = torch.Generator()
        loader = make_loader(recipe, dataset, sampler_rng, device)
        steps_per_epoch = len(loader)
    model = build_model(recipe, example, steps_per_epoch)
    if initialize and purpose != "eval":  # before anything copies the network (the target, the sharding)
        model = replace(model, init=plan_init(recipe, model.network, model.eval_size, download=purpose == "train"))
    # Compiling pays off over many steps only, and sharding and DDP serve a run's processes: a check or an
    # evaluation runs few steps in one process. An evaluation builds the optimizer too (no state before a
    # first step, so it costs little): a run's parts are one shape whatever the command.
    placed = parallelize(model, recipe, device, training=purpose == "train")
    parts = assemble(placed, build_optimization(placed, recipe, steps_per_epoch))
    if example_places is not None:
        _check_views_crop_inside_places(recipe, parts)
    return Setup(recipe, device, dataset, example, parts, steps_per_epoch, loader, sampler_rng, note, example_places)


def _check_views_crop_inside_places(recipe: Recipe, parts: Parts) -> None:
    """A letterboxing data set's padding must never reach the network: every view begins with a crop
    inside each image's place."""
    others = parts.views.views_without_place_crop()
    if others:
        names = ", ".join(f"view {k} ({_first_transform(recipe.views[k - 1])})" for k in others)
        raise UserError(
            f"{recipe.data.dataset.where}: error: data.dataset: keep_aspect serves each image whole on a padded "
            f"square, so every view must begin with clrun/random_resized_crop, which crops inside the image; "
            f"{names} {'begins' if len(others) == 1 else 'begin'} otherwise: make clrun/random_resized_crop its "
            f"first transform (it takes kornia/RandomResizedCrop's size, scale and ratio)")


def _first_transform(view) -> str:
    return view.transforms[0].name if view.transforms else "no transforms"


def _data(recipe: Recipe, purpose: Purpose) -> tuple[Optional[Dataset], tuple[Tensor, Optional[Tensor]], str]:
    """The data set, a few of its images (and their places, when it letterboxes them) and a note."""
    try:
        dataset = recipe.data.dataset.build()
    except DataNotFoundError as exc:
        if purpose != "check" or exc.expected_shape is None:
            raise
        images = torch.randint(0, 256, (EXAMPLE_SIZE, *exc.expected_shape), dtype=torch.uint8)
        return None, (images, None), f"not available here ({exc}); checking the rest on random images of shape {exc.expected_shape}"
    if images_in(dataset) == 0:
        raise UserError(f"{recipe.data.dataset.where}: error: data.dataset: the data set is empty")
    if isinstance(dataset, Stream):
        firsts = dataset.examples(EXAMPLE_SIZE)
    else:
        firsts = [dataset[i] for i in range(min(EXAMPLE_SIZE, len(dataset)))]
    example, places = stacked(firsts)
    if example.shape[0] < 2:
        raise DataNotFoundError(f"{recipe.data.dataset.where}: error: data.dataset: fewer than 2 images; a batch needs 2 or more")
    return dataset, (example, places), ""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: no CUDA device is available here; use train.device=cpu or auto")
    return device
