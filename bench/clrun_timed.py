"""cl-run's SimCLR training, timed through its public API: ``clrun.load_recipe`` + ``clrun.train``.

The clock is read by a run callback, ``bench/step_timer``, registered in this process only: it sees every
step through ``clrun_step_outputs`` (called right after each step; ``clrun_step_end`` comes in batches, at
each read of the metrics), so the timed window holds training steps and nothing else (no recipe loading, no
building, no warm-up steps, no checkpoint or report written after the last step). Everything cl-run does
per step is inside it: the DataLoader, views, network, loss and its metrics, the optimizer and schedule,
the NaN check, the metrics file and the run hooks.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from typing import Any, Callable

import torch

import clrun
from clrun.plugin_manager import default_registry

from common import StepWindow, interleave, median, parser, recipe_overrides, settings, setup
from reporting import describe, report, summary_table

TIMER = "bench/step_timer"
CLRUN = "cl-run (clrun.train)"  # the side's name in every table


class StepTimer:
    """The run callback: hands each step's number to the window of the run in progress."""

    window: StepWindow | None = None
    parameters: int | None = None
    reads = frozenset()  # it reads none of the step's outputs: it only counts the steps

    def clrun_run_start(self, run: clrun.Run) -> None:
        # Shown beside the hand-written sides' count: the same number says it is the same network.
        network = getattr(getattr(run, "parts", None), "network", None)
        StepTimer.parameters = sum(p.numel() for p in network.parameters()) if network is not None else None

    def clrun_step_outputs(self, run: clrun.Run, outputs: Any, labels: Any) -> None:
        StepTimer.window.step_done(run.step)


def _register_timer() -> None:
    """Offer ``bench/step_timer`` in this process's registry (cl-run has no public call for this: a plugin
    would normally come through an installed entry point)."""
    registry = default_registry()
    if not registry.list("callback", TIMER):
        registry.add(clrun.Component("callback", TIMER, StepTimer, "times training steps (benchmarks)"), "bench")


def train_clrun(args: argparse.Namespace, window: StepWindow) -> dict[str, Any]:
    """One cl-run training run of ``window.total`` steps; returns images/s over the timed window."""
    _register_timer()
    with tempfile.TemporaryDirectory(prefix="clrun-bench-") as tmp:
        overrides = [*recipe_overrides(args), f"callbacks=[{{name: {TIMER}}}]", f"train.max_steps={window.total}",
                     f"run.dir={tmp}", "run.name=bench"]
        recipe = clrun.load_recipe(args.recipe, overrides)
        StepTimer.window = window
        log = io.StringIO()  # cl-run's console lines would break up the benchmark's table
        try:
            with contextlib.redirect_stdout(log):
                clrun.train(recipe)
        except BaseException:
            sys.stderr.write(log.getvalue())
            raise
    return {"images_per_s": window.per_second(recipe.data.batch_size), "parameters": StepTimer.parameters}


def against_clrun(args: argparse.Namespace, device: torch.device, name: str,
                  train_other: Callable[[StepWindow], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """cl-run and another side (``train_other(window)``), each timed ``args.repeats`` times, interleaved;
    cl-run's results first."""
    window = lambda: StepWindow(args.warmup, args.steps, device)  # noqa: E731 (a fresh one per run)
    return interleave({CLRUN: lambda: train_clrun(args, window()), name: lambda: train_other(window())}, args.repeats)


def compare_throughput(doc: str, key: str, title: str, other: str,
                       train_other: Callable[[dict[str, Any], torch.device, str, StepWindow], dict[str, Any]],
                       judge: Callable[[float, float], str]) -> None:
    """A benchmark's whole run: parse the options, time cl-run against ``train_other(cfg, device,
    precision, window)`` interleaved, and report the table with ``judge(cl-run images/s, other's)``,
    the verdict line, under ``key`` in RESULTS.md."""
    args = parser(doc).parse_args()
    device = setup(args)
    cfg = settings(args)
    results = against_clrun(args, device, other, lambda window: train_other(cfg, device, args.precision, window))
    clrun_speed, other_speed = (median(runs, "images_per_s") for runs in results.values())
    report(args, key, title, [
        describe(args, cfg), "",
        *summary_table(results, [("parameters", "parameters")]), "",
        judge(clrun_speed, other_speed),
    ])
