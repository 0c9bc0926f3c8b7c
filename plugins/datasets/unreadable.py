"""Unreadable images skipped on request, and counted across the DataLoader's worker processes."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# Each skipped file is named on the console up to this many; the count goes on in the metric.
NAMED = 10


class SkippedImages:
    """Which files a data set skipped because they could not be decoded: one flag per file.

    The flags live in shared memory: every DataLoader worker holds its own copy of the data set, and
    torch hands a shared tensor to a worker by handle (with fork and spawn alike), so a file that any
    worker skipped is counted where the run reads ``count()``. A file is counted once however often it
    is read; the count starts at zero in each process that builds the data set (a resumed run counts
    again from zero).
    """

    def __init__(self, owner: str, files: list[Path]) -> None:
        self.owner = owner
        self.files = files
        self.flags = torch.zeros(len(files), dtype=torch.bool).share_memory_()

    def known(self, index: int) -> bool:
        """Whether ``files[index]`` was already found unreadable."""
        return bool(self.flags[index])

    def record(self, index: int, error: BaseException) -> None:
        """Flag ``files[index]`` and name it on stderr (the first ``NAMED`` files only)."""
        if self.flags[index]:
            return
        before = self.count()
        self.flags[index] = True
        if before < NAMED:
            more = "" if before < NAMED - 1 else " (further unreadable images are skipped without a message)"
            print(f"warning: {self.owner}: skipped unreadable image {self.files[index]} ({type(error).__name__}: "
                  f"{error}); counted in the metric skipped_images{more}", file=sys.stderr, flush=True)

    def count(self) -> int:
        """How many distinct files were skipped so far."""
        return int(self.flags.sum())

    def paths(self) -> list[Path]:
        """The skipped files, in the data set's order."""
        return [self.files[i] for i in self.flags.nonzero().flatten().tolist()]
