"""Data sets read as streams (tar shards, Parquet files): each process, and each loader worker in it,
reads its own part sequentially, and an epoch stops after a fixed number of batches, the same on every
process. The training loop tells the stream where it is (``place``), so a run stopped mid-epoch resumes
bit-exactly: every reader skips the records its share of the done batches took, before decoding them.

A plugin's stream subclasses ``Stream`` and gives three things:

    epoch_size                  images in one epoch, all processes together
    records(reader, readers, seed)
                                the raw records of reader ``reader`` of ``readers`` (processes x loader
                                workers), in an order that depends on ``seed`` (the run's seed and the
                                epoch) only; enough of them for any epoch (cycle the data, or draw shards
                                with replacement); cheap to skip (not decoded yet)
    decode(record)              ``(uint8 image (C, H, W), label)``, label -1 when unlabeled

How batches map to readers. A torch ``DataLoader`` over an iterable data set collates each batch from one
worker and takes the workers' batches in turn: batch ``i`` comes from worker ``i % W``. A reader serves the
batches of one *role*: ``i % W == role``. Resumed after ``done`` batches, a fresh loader starts again with
worker 0, so worker ``w`` plays role ``(w + done) % W``: batch ``done + j`` comes from worker ``j % W``,
exactly the batch an uninterrupted epoch would have. Bit-exact resumes need the same number of processes
and workers; with other numbers the run continues on a different (equally valid) order.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from clrun.errors import DataError


class Stream(IterableDataset):
    """Base class of streamed data sets (see the module's text). Subclasses set ``epoch_size`` and
    ``name`` (for messages) and implement ``records`` and ``decode``."""

    name = "a streamed data set"
    epoch_size: int

    def records(self, reader: int, readers: int, seed: int) -> Iterator[Any]:
        """The raw records of reader ``reader`` of ``readers`` (processes x loader workers), in an order
        that depends on ``seed`` only, enough for any epoch (cycle the data, or draw shards with
        replacement), cheap to skip: they are decoded only when used."""
        raise NotImplementedError

    def decode(self, record: Any) -> tuple[torch.Tensor, int]:
        """One record as ``(uint8 image (C, H, W), label)``, label -1 when unlabeled."""
        raise NotImplementedError

    # -- set by the training loop (clrun.training.data) ------------------------------------------------
    _seed, _batch, _ranks, _rank, _done, _workers = 0, 1, 1, 0, 0, 1

    def place(self, seed: int, batch_size: int, ranks: int, rank: int, done_batches: int = 0) -> None:
        """Where the next iteration starts: the epoch's ``seed``, each process's ``batch_size``, the
        processes, and the batches of this epoch already trained."""
        self._seed, self._batch, self._ranks, self._rank, self._done = seed, batch_size, ranks, rank, done_batches

    def steps(self) -> int:
        """Batches in one epoch, the same on every process (whole global batches only)."""
        return self.epoch_size // (self._batch * self._ranks)

    def __len__(self) -> int:
        """Images this process reads in one epoch (torch's DataLoader derives its length from it)."""
        return self.steps() * self._batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        role = (worker + self._done) % workers
        done = len(range(role, self._done, workers))  # this role's batches already trained
        total = len(range(role, self.steps(), workers))
        reader, readers = self._rank * workers + role, self._ranks * workers
        wanted = slice(done * self._batch, total * self._batch)
        served = 0
        for record in itertools.islice(self.records(reader, readers, self._seed), wanted.start, wanted.stop):
            served += 1
            yield self.decode(record)
        if served < wanted.stop - wanted.start:
            raise DataError(f"{self.name}: reader {reader} of {readers} ran out after {wanted.start + served} "
                            f"images of the {wanted.stop} its share of an epoch needs; records() must cycle "
                            f"its data (or draw shards with replacement)")

    def examples(self, count: int) -> list[tuple[torch.Tensor, int]]:
        """The first ``count`` images of the stream in its unshuffled order (seed 0): the same ones in every
        run, for shapes before training and the health checks' fixed sample."""
        return [self.decode(r) for r in itertools.islice(self.records(0, 1, 0), count)]


def images_in(dataset: Any) -> int:
    """Images in one epoch of ``dataset``: a stream's ``epoch_size``, a map-style data set's length."""
    return dataset.epoch_size if isinstance(dataset, Stream) else len(dataset)
