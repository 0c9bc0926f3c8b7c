"""The contrastive loss alone: cl-run's ``clrun/ntxent`` against LightlySSL's ``NTXentLoss``, forward + backward.

    python bench/loss_vs_lightly.py                             # N=4096, d=128 on the CPU: about 2 minutes on 2 cores
    python bench/loss_vs_lightly.py --repeats 5 --results bench/RESULTS.md
    python bench/loss_vs_lightly.py --device cuda --warmup 10 --steps 100

Both get the same two float32 projection batches of shape (N, d), one per view (2N vectors: a 2N x 2N
similarity matrix), and the same temperature; cl-run's loss is built by its public API (``clrun.create``).
One step = forward, then backward to the projections. Before timing, the two must agree on the loss and
its gradients. cl-run's loss also returns its metrics (contrastive accuracy, logit entropy, positive and
negative cosines) from the same call: they are part of its time. Memory is the peak that one step adds
above its inputs, measured once per side in a fresh process (a heap that another loss already grew would
hide it): on CUDA ``torch.cuda.max_memory_allocated``, on the CPU the process's peak RSS (VmHWM, reset
just before the step through /proc/self/clear_refs: exact, no sampling) above its RSS before the step.
Needs LightlySSL (an optional benchmark dependency; see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch

import clrun
from common import in_new_process, interleave, median, setup, sync
from reporting import report, summary_table
from lightly_ref import require_lightly

CLRUN, LIGHTLY = "cl-run clrun/ntxent", "LightlySSL NTXentLoss"


def losses(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Callable[[], torch.Tensor]], list]:
    """Each side's loss on the same two (N, d) inputs, as a function that computes it; and the inputs."""
    from lightly.loss import NTXentLoss

    generator = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(args.n, args.dim, generator=generator).to(device).requires_grad_() for _ in range(2))
    clrun_loss = clrun.create("loss", "clrun/ntxent", temperature=args.temperature)
    lightly_loss = NTXentLoss(temperature=args.temperature)
    outputs = clrun.StepOutputs(features=[z1, z2], projections=[z1, z2], is_global=[True, True])
    return {CLRUN: lambda: clrun_loss(outputs)["loss"], LIGHTLY: lambda: lightly_loss(z1, z2)}, [z1, z2]


def step(loss: Callable[[], torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    """Forward and backward to the inputs; returns the loss."""
    for z in inputs:
        z.grad = None
    value = loss()
    value.backward()
    return value


def steps_per_second(loss: Callable[[], torch.Tensor], inputs: list, args: argparse.Namespace,
                     device: torch.device) -> dict[str, float]:
    for _ in range(args.warmup):
        step(loss, inputs)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(loss, inputs)
    sync(device)
    return {"images_per_s": args.steps / (time.perf_counter() - start)}


def memory_of_one_step(loss: Callable[[], torch.Tensor], inputs: list, device: torch.device) -> dict[str, float]:
    """The peak one step adds above what is held before it (in a fresh process: see the module's docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(loss, inputs)
        sync(device)
        return {"memory_mb": (torch.cuda.max_memory_allocated(device) - before) / 2**20}
    try:  # writing 5 resets VmHWM, the process's peak RSS, to its current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return {"memory_mb": None}
    before = _status_kib("VmRSS")
    step(loss, inputs)
    return {"memory_mb": (_status_kib("VmHWM") - before) / 1024}


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def check_agreement(sides: dict[str, Callable[[], torch.Tensor]], inputs: list) -> None:
    """Both compute SimCLR's NT-Xent: the same value and gradients, or the timing compares different things."""
    (a, grads_a), (b, grads_b) = ((step(loss, inputs).detach(), [z.grad.clone() for z in inputs])
                                  for loss in sides.values())
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5) or not all(
            torch.allclose(x, y, rtol=1e-3, atol=1e-7) for x, y in zip(grads_a, grads_b)):
        raise SystemExit(f"the two losses disagree (cl-run {a.item():.6f}, LightlySSL {b.item():.6f}): "
                         "they do not compute the same loss")
    print(f"  the losses agree: {a.item():.6f} and {b.item():.6f}, gradients within 1e-3", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto")
    p.add_argument("--n", type=int, default=4096, help="images per batch: each view's projections are (N, d)")
    p.add_argument("--dim", type=int, default=128, help="d, the projection width")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=10, help="timed forward + backward steps per repetition")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of each side")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    p.add_argument("--results", type=Path, help="also write the table into this file (bench/RESULTS.md)")
    p.add_argument("--memory-of", choices=(CLRUN, LIGHTLY), help=argparse.SUPPRESS)  # internal: one side's memory
    args = p.parse_args()
    device = setup(args)
    version = require_lightly()
    sides, inputs = losses(args, device)
    if args.memory_of:
        print(json.dumps(memory_of_one_step(sides[args.memory_of], inputs, device)), flush=True)
        return
    check_agreement(sides, inputs)
    results = interleave({name: lambda loss=loss: steps_per_second(loss, inputs, args, device)
                          for name, loss in sides.items()}, args.repeats)
    for name, runs in results.items():
        runs[0].update(in_new_process("--memory-of", name))
    speedup = median(results[CLRUN], "images_per_s") / median(results[LIGHTLY], "images_per_s")
    memory = "peak CUDA MB one step adds" if device.type == "cuda" else "peak RSS MB one step adds"
    lines = summary_table(results, [(memory, "memory_mb")])
    lines[0] = lines[0].replace("images/s", "steps/s")
    title = f"The contrastive loss alone, forward + backward: cl-run against LightlySSL {version}"
    report(args, "loss_vs_lightly", title, [
        f"N={args.n} images per batch (2N={2 * args.n} vectors), d={args.dim}, temperature {args.temperature}, "
        f"float32, on {args.device}; {args.steps} timed steps after {args.warmup} warm-up steps; median of "
        f"{args.repeats} interleaved runs per side; memory from one step in a fresh process.", "", *lines, "",
        f"**cl-run / LightlySSL steps/s: {speedup:.2f}x** (no target: for the record)",
    ])


if __name__ == "__main__":
    main()
