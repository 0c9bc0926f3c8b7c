"""The training data loader: batches of uint8 images in an order that depends on the seed and epoch only,
resumable in the middle of an epoch, and how long the steps wait for them."""

from __future__ import annotations

import itertools
import re
import time
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from clrun import distributed
from clrun.errors import ComponentFailure, UserError
from clrun.recipe.spec import ComponentSpec
from clrun.streams import Stream, images_in
from clrun.training.callbacks.recipe_callbacks import describe
from clrun.recipe import Recipe


class ResumableSampler(Sampler[int]):
    """``base``'s indices without the first ``skip`` ones: the batches an interrupted epoch already
    trained on. The order itself is ``base``'s, so the remaining batches are exactly those an
    uninterrupted epoch would have drawn. ``skip`` is set per epoch by ``set_epoch``."""

    def __init__(self, base: Sampler[int]) -> None:
        self.base = base
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


def make_loader(recipe: Recipe, dataset: Dataset, rng: torch.Generator, device: torch.device) -> DataLoader:
    """Batches of ``data.batch_size`` images, or with N processes each rank's ``batch_size / N`` share of
    a global batch (a distributed sampler gives every rank a disjoint part of the data; a ``Stream``
    splits itself over processes and loader workers)."""
    data = recipe.data
    world = distributed.world_size()
    if data.batch_size % world:
        raise UserError(
            f"{data.dataset.where}: error: data.batch_size: {data.batch_size} does not split evenly over "
            f"{world} processes; use a multiple of {world} (the batch size is the global batch, each process "
            f"takes batch_size / {world} images)"
        )
    size = images_in(dataset)
    if (data.drop_last or isinstance(dataset, Stream)) and size < data.batch_size:
        raise UserError(
            f"{data.dataset.where}: error: data.batch_size: {data.batch_size} is more than the data set's "
            f"{size} images, so no full batch can be made; lower data.batch_size"
        )
    if isinstance(dataset, Stream):
        dataset.place(recipe.seed, data.batch_size // world, world, distributed.rank())
        # Fresh workers each epoch: they take the stream's place (epoch, batches done) with them.
        return DataLoader(dataset, batch_size=data.batch_size // world, num_workers=data.num_workers,
                          drop_last=True, pin_memory=device.type == "cuda")
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=distributed.rank(), shuffle=True,
                                     seed=recipe.seed, drop_last=True)
    else:
        sampler = RandomSampler(dataset, generator=rng)
    return DataLoader(
        dataset, batch_size=data.batch_size // world, sampler=ResumableSampler(sampler), num_workers=data.num_workers,
        drop_last=data.drop_last, pin_memory=device.type == "cuda", persistent_workers=data.num_workers > 0,
    )


def stacked(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Data set items stacked: their images, and their places on the canvas when the data set letterboxes
    them (items ``(image, label, place)``, e.g. ``clrun/image_folder`` with keep_aspect), else None."""
    images = torch.stack([item[0] for item in items])
    places = torch.stack([torch.as_tensor(item[2]) for item in items]) if len(items[0]) > 2 else None
    return images, places


def set_epoch(loader: DataLoader, rng: torch.Generator, seed: int, epoch: int, done_batches: int = 0) -> None:
    """Seed the epoch's data order from the seed and the epoch only, so a resumed run sees the same order,
    and skip the ``done_batches`` an interrupted epoch already trained on."""
    if isinstance(loader.dataset, Stream):
        loader.dataset.place(seed * 100_003 + epoch, loader.batch_size, distributed.world_size(),
                             distributed.rank(), done_batches)
        return
    sampler: ResumableSampler = loader.sampler
    if isinstance(sampler.base, DistributedSampler):
        sampler.base.set_epoch(epoch)
    else:
        rng.manual_seed(seed * 100_003 + epoch)
    sampler.skip = done_batches * loader.batch_size


def batches(loader_iterator: Iterator, dataset: ComponentSpec) -> Iterator:
    """The loader's batches. A data set's error raised in a worker process comes out without torch's
    wrapper ("Caught ... in DataLoader worker process N" and the worker's traceback): a ``UserError``
    (a ``DataError`` naming a file) as the data set raised it; anything else as a ``ComponentFailure``
    naming the data set's component, plugin and recipe line."""
    while True:
        try:
            batch = next(loader_iterator)
        except StopIteration:
            return
        except UserError as exc:
            raise _unwrapped(exc) from None
        except Exception as exc:
            message = _original_message(exc)
            raise ComponentFailure(f"{describe(dataset)} failed while loading a batch: {message}") from exc
        yield batch


def _original_message(exc: Exception) -> str:
    """``Type: message`` of the error a worker raised (the last lines of torch's wrapper text)."""
    text, name = str(exc), type(exc).__name__
    if text.startswith("Caught ") and "Original Traceback" in text:
        lines = text.rstrip().splitlines()
        # The traceback's last entry: "Name: message" or "package.module.Name: message".
        head = re.compile(rf"^(?:[\w.]+\.)?{re.escape(name)}: ")
        start = max((i for i, line in enumerate(lines) if head.match(line)), default=len(lines) - 1)
        return f"{name}: " + head.sub("", "\n".join(lines[start:]), count=1)
    return f"{name}: {text}"


def _unwrapped(exc: UserError) -> UserError:
    message = _original_message(exc).removeprefix(f"{type(exc).__name__}: ")
    try:
        return type(exc)(message)
    except TypeError:  # an error class with another constructor: keep it whole
        return exc


class DataWait:
    """How long an epoch's steps waited for their batches: ``on(batches)`` yields the batches and times
    each wait. ``fraction``: the share of the epoch's wall time spent waiting, the data-stall metric (near 0:
    the model is the bottleneck; near 1: the loader is)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.waiting = 0.0

    def on(self, batches: Iterator) -> Iterator:
        while True:
            asked = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.waiting += time.perf_counter() - asked
            yield batch

    @property
    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)

    @property
    def fraction(self) -> float:
        return min(self.waiting / self.elapsed, 1.0)
