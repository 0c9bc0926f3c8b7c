"""(d) torch.compile on and off: the same timed training run (as in ``throughput``) with ``train.compile``
false, then true.

Records images/s of both, the speed-up, the warm-up seconds of both (from the run's start to the end of the
untimed steps: the compile happens in the first steps, so the difference is about what compiling cost), and
dynamo's count of compiled graphs and graph breaks, by reason (``torch._dynamo.utils.counters``; absent if a
torch release moves them). cl-run compiles by regions (``clrun.training.parallel.compiling``): each repeated
block of the backbone, the target's copy and the heads, in place, with ``dynamic=False``.

At the CPU scale one tiny model is compiled with the ``aot_eager`` backend (dynamo and AOT autograd trace and
split the graphs as on a GPU, without inductor's C++ code generation, a minute on 2 cores even for one ViT
block); on a GPU the backend is torch's default, inductor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from gpu_check import recipes
from gpu_check.context import Context
from gpu_check.record import Section
from gpu_check.throughput import planned_run, timed_training


@contextmanager
def compile_backend(backend: str | None) -> Iterator[None]:
    """Make ``nn.Module.compile()`` (what cl-run calls on each region) use ``backend``; None leaves torch's
    default. A recipe has no key for the backend: the choice is the check's, at the CPU scale only."""
    if backend is None:
        yield
        return
    original = torch.nn.Module.compile

    def compile_with(module, *args, **kwargs):
        kwargs.setdefault("backend", backend)
        return original(module, *args, **kwargs)

    torch.nn.Module.compile = compile_with
    try:
        yield
    finally:
        torch.nn.Module.compile = original


def dynamo_counters() -> dict[str, Any]:
    """Compiled graphs and graph breaks since the last reset, the top reasons first (dynamo's private
    counters, as ``cl-run check -v`` reads them: empty if a torch release moves them)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    reasons = Counter()
    for key in ("graph_break", "unimplemented"):  # where torch releases have kept graph-break reasons
        reasons.update({str(reason).splitlines()[0]: n for reason, n in counters.get(key, {}).items()})
    return {"unique_graphs": counters.get("stats", {}).get("unique_graphs"), "graph_breaks": sum(reasons.values()),
            "graph_break_reasons": dict(reasons.most_common(10))}


def reset_dynamo() -> None:
    torch._dynamo.reset()  # no graph of an earlier item is reused, and the counters start at zero
    try:
        from torch._dynamo.utils import counters

        counters.clear()
    except ImportError:
        pass


def planned(ctx: Context) -> list[recipes.Planned]:
    """Each configuration eager, then compiled."""
    return [run for m in ctx.scale.compile_runs for run in (planned_run(m, ctx), planned_run(m, ctx, compile=True))]


def compare_one(eager_run: recipes.Planned, compiled_run: recipes.Planned, ctx: Context) -> dict[str, Any]:
    batch = eager_run.batch
    _, eager = timed_training(eager_run, ctx)
    reset_dynamo()
    with compile_backend(ctx.scale.compile_backend):
        _, compiled = timed_training(compiled_run, ctx)
    counted = dynamo_counters()
    reset_dynamo()
    eager_ips, compiled_ips = batch / eager.seconds_per_step(), batch / compiled.seconds_per_step()
    return {"recipe": eager_run.recipe.name, "batch": batch, "backend": ctx.scale.compile_backend or "inductor",
            "eager_images_per_s": eager_ips, "compiled_images_per_s": compiled_ips,
            "speedup": compiled_ips / eager_ips,
            "eager_warmup_s": eager.warmup_seconds(), "compiled_warmup_s": compiled.warmup_seconds(),
            **counted}


def run(section: Section, ctx: Context) -> None:
    runs = planned(ctx)
    for eager_run, compiled_run in zip(runs[::2], runs[1::2]):
        # No per-item limit below the section's: a cold inductor compile of a ViT takes most of a minute.
        section.run(eager_run.item, lambda e=eager_run, c=compiled_run: compare_one(e, c, ctx))
