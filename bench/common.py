"""What every benchmark here shares: options, the recipe's settings, the timed window, interleaved repetitions.

How the numbers are taken (the same for every script):

* Each side of a comparison runs ``--repeats`` times, interleaved, and rounds alternate which side goes
  first (A B, B A, A B, ...): slow drift of the machine (another process, clock changes, a warming
  page cache) then falls on both sides alike instead of on whichever ran second. The median over
  the repetitions is reported, with the spread (min-max) so a noisy machine shows.
* Inside one repetition the first ``--warmup`` steps are not timed (allocator growth, oneDNN/cuDNN kernel
  choice, DataLoader workers starting); the clock starts when step ``warmup`` has ended and stops when step
  ``warmup + steps`` has, with the device synchronized at both ends (CUDA work is asynchronous).
* Building (recipe, model, data set) and whatever a run writes after its last step are outside the window.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


# ---------------------------------------------------------------------------------------------- options


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; defaults are CPU-sized (a few minutes on 2 cores)."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA when available)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per repetition")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed ones (>= 1)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the recipe's)")
    p.add_argument("--backbone", help="timm model name, e.g. resnet18 (default: the recipe's)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of each side")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own, one per core)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the same on every side")
    p.add_argument("--recipe", type=Path, default=QUICKSTART, help="the SimCLR recipe cl-run trains")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST idx .gz files (default: the data set's)")
    p.add_argument("--results", type=Path, help="also write the table into this file (bench/RESULTS.md)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Check the options, set the thread count and resolve ``--device auto``; returns the device."""
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("--warmup, --steps and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here; use --device cpu")
    return device


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The recipe overrides that make cl-run's run the one every side reproduces.

    The whole 60k training split (not the quickstart's 10k subset), so the timed window rarely crosses an
    epoch end; no evaluation callbacks and no health monitor (they are not training steps, and no other
    side has them); checkpoints only after the last step (disk writes, not steps). ``max_steps`` is set by
    the side that trains.
    """
    out = ["callbacks=[]", "health.enabled=false", "data.dataset.subset=null", "train.epochs=1000",
           "train.checkpoint_every=1000", "train.progress=false", f"train.device={args.device}",
           f"train.precision={args.precision}"]
    if args.batch_size:
        out.append(f"data.batch_size={args.batch_size}")
    if args.backbone:
        out.append(f"backbone.name=timm/{args.backbone}")
    if args.threads:
        out.append(f"train.threads={args.threads}")
    if args.data_root:
        out.append(f"data.dataset.root={args.data_root}")
    return out


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe, overrides applied and defaults filled in, as a plain dict: what every side reads, so
    the hand-written sides train exactly what cl-run trains without reading cl-run's code."""
    import clrun
    from clrun.recipe import resolved

    return resolved(clrun.load_recipe(args.recipe, recipe_overrides(args)))


def dataset(cfg: dict[str, Any]):
    """The recipe's data set (uint8 images), built by cl-run's public API: every side reads the same images."""
    import clrun

    entry = dict(cfg["data"]["dataset"])
    return clrun.create("dataset", entry.pop("name"), **entry)


def autocast(device: torch.device, precision: str):
    """The precision every side trains in (cl-run's ``train.precision``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ---------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepWindow:
    """The timed window of one repetition: from the end of step ``warmup`` to the end of step ``warmup + steps``.

    Call ``step_done(n)`` after every step with the number of steps completed so far.
    """

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start = self.end = None

    @property
    def total(self) -> int:
        return self.warmup + self.steps

    def step_done(self, n: int) -> None:
        if n == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        elif n == self.total:
            sync(self.device)
            self.end = time.perf_counter()

    def per_second(self, items_per_step: int) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the run ended before step {self.total}: nothing was timed")
        return self.steps * items_per_step / (self.end - self.start)


def timed_batches(loader: Iterable, window: StepWindow) -> Iterator:
    """The loader's batches, epoch after epoch, for ``window.total`` steps; a step counts as done (for the
    clock) when the loop asks for the next batch, and after the last one."""
    step = 0
    while True:
        for batch in loader:
            yield batch
            step += 1
            window.step_done(step)
            if step == window.total:
                return


def measured(window: StepWindow, batch_size: int, network: torch.nn.Module) -> dict[str, Any]:
    """A run's result: images/s over the timed window, and the network's size (the same on every side
    that trains the same network)."""
    return {"images_per_s": window.per_second(batch_size), "parameters": sum(p.numel() for p in network.parameters())}


def interleave(sides: dict[str, Callable[[], dict[str, float]]], repeats: int) -> dict[str, list[dict[str, float]]]:
    """Run every side ``repeats`` times, alternating which goes first each round; each call returns its
    measurements (e.g. ``{"images_per_s": ...}``)."""
    names = list(sides)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].append(sides[name]())
            shown = "  ".join(f"{k} {v:.4g}" for k, v in results[name][-1].items() if isinstance(v, float))
            print(f"  round {r + 1}/{repeats}  {name}: {shown}", file=sys.stderr, flush=True)
    return results


def in_new_process(option: str, value: str) -> dict[str, Any]:
    """Run this script again with its own options plus ``option value`` in a fresh Python process (its own
    memory, from a clean heap); the last line it prints is a JSON object of measurements."""
    command = [sys.executable, sys.argv[0], *sys.argv[1:], option, value]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{os.path.basename(sys.argv[0])} {option} {value} failed (exit code {done.returncode}); "
                         "its output is above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(runs: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def spread(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    return f"{min(values):.4g}-{max(values):.4g}" if values else "-"
