"""(b) Sync audit: the host-device synchronizations of each training step, by call site.

A sync makes the host wait for the GPU to drain its queue: the CPU cannot run ahead and prepare the next
step, and the GPU idles while it catches up. On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` makes torch
warn at every synchronizing call; each warning is counted at its call site (the innermost frame in cl-run,
its plugins, kornia or timm). On the CPU there is nothing to synchronize, so cl-run's own counter
(``clrun.host_syncs.HostSyncCounter``) finds the calls that would sync on a GPU, by the same kind of site.

Steps ``sync_warmup + 1`` to ``sync_warmup + sync_steps`` are audited (the first steps make lazy state such as
the optimizer's moments). Each step's interval runs from the end of the previous step to its own end: the
data loader's next batch, the step, and the loop's work after it.
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from gpu_check import probe, recipes
from gpu_check.bootstrap import REPO
from gpu_check.context import Context
from gpu_check.record import Section, short

SYNC_WARNING = "synchronizing CUDA operation"
# Where a sync is attributed: the innermost frame in one of these (cl-run's tree, then the libraries it calls).
CLRUN_TREE = (str(REPO / "core") + "/", str(REPO / "plugins") + "/")
OWNERS = (*CLRUN_TREE, "/kornia/", "/timm/")
NOT_A_SITE = ("/torch/", "/warnings.py", __file__)


def frame(f: traceback.FrameSummary) -> str:
    return f"{short(f.filename)}:{f.lineno} {f.name}"


def call_site(frames: list[traceback.FrameSummary]) -> str:
    """The innermost frame in cl-run, kornia or timm; when that is a library's, `` <- `` the innermost
    frame in cl-run's own tree that led there (the line to change)."""
    inner_first = [f for f in reversed(frames) if not any(part in f.filename for part in NOT_A_SITE)]
    if not inner_first:
        return frame(frames[-1])
    site = next((f for f in inner_first if any(owner in f.filename for owner in OWNERS)), inner_first[0])
    ours = next((f for f in inner_first if f.filename.startswith(CLRUN_TREE)), None)
    return frame(site) if ours is None or ours is site else f"{frame(site)} <- {frame(ours)}"


class CudaWarnings:
    """Counts torch's sync warnings by call site while ``on``; other warnings are shown as usual."""

    method = 'torch.cuda.set_sync_debug_mode("warn")'

    def __init__(self) -> None:
        self.current: Counter = Counter()
        self.on = False

    @contextmanager
    def around_run(self) -> Iterator[None]:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # every sync, not the first per call site
            shown = warnings.showwarning

            def seen(message, category, filename, lineno, file=None, line=None):
                if SYNC_WARNING in str(message):
                    if self.on:
                        self.current[call_site(traceback.extract_stack()[:-1])] += 1
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = seen
            try:
                yield
            finally:
                self.stop()

    def start(self) -> None:
        self.current, self.on = Counter(), True
        torch.cuda.set_sync_debug_mode("warn")

    def take(self) -> Counter:
        taken, self.current = self.current, Counter()
        return taken

    def stop(self) -> None:
        self.on = False
        torch.cuda.set_sync_debug_mode(0)


class HostSyncs:
    """cl-run's CPU counter (``clrun.host_syncs``): it must see the whole run, to tell the device's tensors
    (parameters, the images once moved) from host data; ``counting`` and ``counts`` are its public switches."""

    method = "clrun.host_syncs.HostSyncCounter (on the CPU: the calls that would sync on a GPU)"

    def __init__(self) -> None:
        from clrun.host_syncs import HostSyncCounter

        self.counter = HostSyncCounter()

    def around_run(self):
        return self.counter

    def start(self) -> None:
        self.counter.counts, self.counter.counting = Counter(), True

    def take(self) -> Counter:
        taken, self.counter.counts = self.counter.counts, Counter()
        return taken

    def stop(self) -> None:
        self.counter.counting = False


def planned(ctx: Context) -> list[recipes.Planned]:
    scale, shipped = ctx.scale, recipes.shipped()
    steps = scale.sync_warmup + scale.sync_steps
    return [recipes.short_run(m.item, shipped[m.recipe], ctx, steps, m.batch, images=m.batch * steps, noise=True,
                              extra=["health.enabled=false"]) for m in scale.sync_runs]


def audit_one(planned: recipes.Planned, ctx: Context) -> dict[str, Any]:
    scale = ctx.scale
    source = CudaWarnings() if ctx.device.type == "cuda" else HostSyncs()
    per_step: list[Counter] = []

    def stepped(index: int) -> None:
        per_step.append(source.take())
        if index == scale.sync_steps:
            source.stop()

    watch = probe.Watch(ctx.device, scale.sync_warmup, scale.sync_steps, timed=False, opened=source.start,
                        stepped=stepped)
    with source.around_run():
        probe.train(planned, watch, log=ctx.train_log)
    if len(per_step) != scale.sync_steps:
        raise RuntimeError(f"audited {len(per_step)} steps, not {scale.sync_steps}")
    first = scale.sync_warmup + 1
    return {"recipe": planned.recipe.name, "batch": planned.batch, "method": source.method,
            "audited_steps": list(range(first, first + scale.sync_steps)),
            "syncs_per_step": [sum(c.values()) for c in per_step],
            "by_site": dict(sum(per_step, Counter()).most_common())}


def run(section: Section, ctx: Context) -> None:
    for item in planned(ctx):
        section.run(item.item, lambda item=item: audit_one(item, ctx), ctx.scale.item_limit_s)
