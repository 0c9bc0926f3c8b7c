"""Peak memory of a block of code: host memory of the process tree, and CUDA memory."""

from __future__ import annotations

import os
import threading

import torch


class PeakMemory:
    """Peak memory while the ``with`` block runs.

    host_mb: the proportional set size (PSS, ``/proc/<pid>/smaps_rollup``) summed over this process and all
      its descendants (DataLoader workers), sampled every ``interval`` s by a thread. PSS counts a page
      shared by n processes as 1/n in each, so forked workers sharing the parent's pages are not counted
      twice, as summed RSS would; ``ru_maxrss`` would see one process only. A peak shorter than the
      interval can be missed. None where /proc has no smaps_rollup (not Linux >= 4.14).
    cuda_mb: ``torch.cuda.max_memory_allocated`` on the device: tensors, not the caching allocator's
      reserve nor the CUDA context. None on the CPU.
    """

    def __init__(self, device: torch.device, interval: float = 0.05) -> None:
        self.device, self.interval = device, interval
        self.host_mb: float | None = None
        self.cuda_mb: float | None = None
        # The levels when the block started: a peak above them is what the block itself added.
        self.host_before_mb: float | None = None
        self.cuda_before_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_before_mb = torch.cuda.memory_allocated(self.device) / 2**20
        if _pss_kib(os.getpid()) is not None:
            self.host_mb = self.host_before_mb = _tree_pss_mb()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.device.type == "cuda":
            self.cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.host_mb = max(self.host_mb, _tree_pss_mb())
        self.host_mb = max(self.host_mb, _tree_pss_mb())


def _tree_pss_mb() -> float:
    return sum(_pss_kib(pid) or 0 for pid in _process_tree(os.getpid())) / 1024


def _pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from the parent ids in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree
