"""One GPU validation run of cl-run: crash smoke, sync audit, throughput / memory / MFU, compile, kNN.

On the GPU machine (Python 3.12, torch 2.11 and nothing else, no network), from the repository root, after
``bash bench/gpu_wheels.sh`` has filled ``bench/.gpu_payload/`` on a machine with PyPI (sent along as an
ignored path; 64 MiB at most):

    PYTHONUNBUFFERED=1 timeout -k 10 280 python3 bench/gpu_check.py --out "$OUT/gpu_check"

(``bash bench/gpu.sh check "$OUT/gpu_check"`` is the same command.) About 4 minutes. Nothing is installed:
the payload's wheels are unpacked into a temporary folder behind the machine's own packages, and cl-run is
imported from this working tree (``gpu_check/bootstrap.py``). On a CPU, every section at tiny sizes, the
way CI runs it (about 30 s on 2 cores), and, with no GPU needed, every recipe of the GPU run loaded with the
overrides that run will use (a few seconds):

    DEVICE=cpu python bench/gpu_check.py --out /tmp/gpu_check
    python bench/gpu_check.py --out /tmp/gpu_plan --device cuda --dry-run

Sections, in this order, each with its own time budget (``gpu_check/scale.py``):

  environment  Python, torch, torchvision, timm, kornia, ... versions (and where each was imported from),
               CUDA, cuDNN, the GPU, its peak bf16 rate, the TF32 settings
  smoke        (a) every shipped method a few bf16 steps, with kNN, linear and online probes
  syncs        (b) host-device syncs per training step, by call site
  throughput   (c) images/s, peak memory and MFU of ResNet-50, DINO ViT-S/16 multi-crop, iBOT ViT-S/16 and
               MAE ViT-B/16 training, against the model alone on ready tensors
  compile      (d) training with train.compile off and on
  knn          (e) the chunked kNN search on the device against the CPU

Output: ``<out>/gpu_check.jsonl``, one JSON object a line, written and flushed as each item ends (a timeout
keeps everything measured before it), ``{"section", "item", "ok", "seconds", ...}``, with ``"error"`` where
``ok`` is false; the last line is ``{"section": "run", "item": "end", ...}`` when the run got to the end.
``<out>/train.log`` holds cl-run's own console output of every run. docs/guides/gpu_check.md explains every
field. The exit code is 1 when any item failed or was skipped.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

from gpu_check import bootstrap
from gpu_check.scale import SECTIONS

def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring or "
                                "docs/guides/gpu_check.md.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.jsonl and train.log")
    p.add_argument("--device", default=os.environ.get("DEVICE", "cuda"),
                   help="cuda or cpu (default: $DEVICE, else cuda)")
    p.add_argument("--budget", type=float, help="seconds for all sections together, shared in the scale's proportions "
                   "(default: the scale's own, 245 s on a GPU, 82 s on the CPU)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="the sections to run, comma-separated")
    p.add_argument("--payload", type=Path, default=bootstrap.PAYLOAD, help="folder with wheels/ and fashion-mnist/")
    p.add_argument("--data-root", help="folder with the four Fashion-MNIST .gz files (default: the payload's, "
                   "else the data set's default, /usr/share/datasets/fashion-mnist)")
    p.add_argument("--dry-run", action="store_true", help="train nothing: load every run's recipe with its overrides "
                   "(the --device's scale; --device cuda needs no GPU for this), a few seconds")
    args = p.parse_args()
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def fmnist_root(args: argparse.Namespace) -> str | None:
    if args.data_root:
        return args.data_root
    return bootstrap.carried_fmnist(args.payload)


def budgets_for(scale, total: float | None) -> dict[str, float]:
    """The scale's seconds per section, or ``total`` shared in the same proportions."""
    if not total:
        return dict(scale.budgets)
    share = total / sum(scale.budgets.values())
    return {name: seconds * share for name, seconds in scale.budgets.items()}


def run_sections(log, ctx, chosen: list[str], budgets: dict[str, float], release) -> None:
    from gpu_check import compiling, knn, smoke, syncs, throughput
    from gpu_check.record import Section

    modules = {"smoke": smoke, "syncs": syncs, "throughput": throughput, "compile": compiling, "knn": knn}
    planned_end = time.monotonic()
    for name in chosen:
        planned_end += budgets[name]  # a section may use what the sections before it left of their budgets
        modules[name].run(Section(log, name, planned_end - time.monotonic(), release), ctx)


def main() -> int:
    args = options()
    wheels = bootstrap.prepare(args.payload)  # before torch and cl-run are imported
    # Imported only now: the payload's wheels (kornia, timm, ...) are on the path from here on.
    from gpu_check import machine, plan
    from gpu_check.context import Context
    from gpu_check.record import Log, Section
    from gpu_check.scale import for_device

    device = machine.device(args.device, need=not args.dry_run)
    scale = for_device(device.type)
    machine.use_threads(scale.threads)
    budgets = budgets_for(scale, args.budget)
    chosen = [name for name in SECTIONS if name in args.sections.split(",")]
    started = time.monotonic()
    log = Log(args.out / "gpu_check.jsonl")
    ctx = Context(device, scale, fmnist_root(args), args.out / "train.log")
    ctx.train_log.write_text("")  # the runs append to it
    release = lambda: machine.release(device)

    Section(log, "environment", 30, release).run("versions", lambda: {
        "scale": scale.name, "budgets_s": budgets, "fmnist_root": ctx.fmnist_root, "dry_run": args.dry_run,
        **machine.versions(device, wheels)})
    # Everything imported so far lives to the end: the collections between items then scan only what the
    # runs made (a full one over torch's, timm's and kornia's objects takes 0.3 s, 26 times in the smoke).
    gc.freeze()
    if args.dry_run:
        plan.run(Section(log, "plan", 600, release), ctx, chosen)
    else:
        run_sections(log, ctx, chosen, budgets, release)
    seconds = time.monotonic() - started
    failed = list(log.failed)
    log.write({"section": "run", "item": "end", "ok": not failed, "seconds": round(seconds, 1), "failed": failed,
               "scale": scale.name, "device": str(device)})
    log.close()
    print(f"gpu_check: {len(failed)} items failed or skipped, {seconds:.0f} s; results in {log.path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
