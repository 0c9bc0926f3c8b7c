"""Peak memory of a training step for each ImageNet recipe, and what the ways to fit a batch save.

For each recipe (its data replaced by synthetic 224 px images, everything else as written), one fresh process
per measurement builds the run, takes one step (the optimizer's moments appear), then measures the next step:
the peak resident memory (the kernel's high-water mark, reset before the step; CUDA's allocated peak on a GPU)
above the level before it.
That level is the training state: parameters, gradients, optimizer moments, the target network. The step's own
memory at two batch sizes gives the memory per image (their difference, over the images added); at the larger
batch it is measured again with ``train.activation_checkpointing``, and with the batch in ``--chunks`` parts
(``train.accumulate_steps`` for a loss that is a mean of per-image terms, ``train.grad_cache_chunks`` for the
others), each against the plain step.

    python bench/train_memory.py                           # every ImageNet recipe, CPU: about 25 min on 2 cores
    python bench/train_memory.py --recipes dino_vits16 --batch-sizes 4 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("simclr_r50", "mocov3_vits16", "dino_vits16", "ibot_vits16", "lejepa_vits16", "mae_vitb16", "ijepa_vith14")
SYNTHETIC = """data:
  dataset: {{name: clrun/synthetic, num_images: {images}, num_classes: 4, size: 224, channels: 3}}
  batch_size: {batch}
  num_workers: 0
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
"""


def measure(recipe: str, batch: int, settings: list[str], device: str) -> dict:
    """One step's memory in a fresh process (see ``_child``)."""
    done = subprocess.run([sys.executable, __file__, "--child", recipe, str(batch), device, *settings],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{recipe} batch {batch} {settings}: failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(recipe_name: str, batch: int, device_name: str, settings: list[str]) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import torch

    from memory import PeakMemory

    from clrun.recipe import load_recipe
    from clrun.training.run import Run
    from clrun.training.setup import prepare
    from clrun.training.step import Step

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.yaml"
        data.write_text(SYNTHETIC.format(images=batch, batch=batch))
        overrides = [f"train.device={device_name}", "train.progress=false", *settings]
        recipe = load_recipe(REPO / "recipes" / f"{recipe_name}.yaml", overrides, sections_from=data)
        setup = prepare(recipe, "train", torch.device(device_name))
        run = Run(recipe, setup.parts, setup.device, None, steps_per_epoch=1)
        step = Step.of(run)
        images = next(iter(setup.loader))[0]
        step(images)  # the optimizer's moments exist after the first step
        run.step += 1
        if setup.device.type == "cuda":
            with PeakMemory(setup.device) as peak:
                step(images)
            state, top = peak.cuda_before_mb, peak.cuda_mb
        else:
            # The kernel's own high-water mark of this process's resident memory, reset just before the step:
            # exact, where sampling (PeakMemory) misses a CPU step's short-lived peaks.
            Path("/proc/self/clear_refs").write_text("5")
            state = _status_mb("VmRSS")
            step(images)
            top = _status_mb("VmHWM")
        params = sum(p.numel() for p in setup.parts.trainable.parameters())
    print(json.dumps({"state_mb": state, "step_mb": top - state, "parameters": params}))


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (``VmRSS``: resident now, ``VmHWM``: its peak) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {field}: this measurement needs Linux")


def _kind(recipe_name: str) -> str:
    """``accumulate_steps`` for a recipe whose loss is a mean of per-image terms, else ``grad_cache_chunks``."""
    from clrun.recipe import load_recipe
    from clrun.training.split.per_image import is_per_image_mean

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.yaml"
        data.write_text(SYNTHETIC.format(images=8, batch=8))
        recipe = load_recipe(REPO / "recipes" / f"{recipe_name}.yaml", sections_from=data)
    factory = recipe.loss.component.factory
    return "accumulate_steps" if is_per_image_mean(factory) else "grad_cache_chunks"


GPU_MB, USABLE = 80 * 1024, 0.9  # an 80 GB GPU, of which the CUDA context and the allocator's slack leave ~90%


def fit(global_batch: int, gpus: int, state_mb: float, per_image_mb: float, checkpointed: float, parts_by: str) -> str:
    """The cheapest settings under which ``global_batch`` trains on ``gpus`` GPUs of 80 GB, computed from the
    measured state and memory per image: DDP keeps the whole state on each GPU, FSDP 1/N of it; then
    activation checkpointing (its measured ratio), then the share in parts (accumulated or cached)."""
    share = global_batch / gpus
    budget = GPU_MB * USABLE
    for strategy, state in (("ddp", state_mb), ("fsdp", state_mb / gpus)):
        if gpus == 1 and strategy == "fsdp":
            continue
        room = budget - state
        if room <= 0:
            continue
        if share * per_image_mb <= room:
            return f"{strategy}"
        if share * per_image_mb * checkpointed <= room:
            return f"{strategy}, checkpointing"
        parts = int(-(-share * per_image_mb * checkpointed // room))
        if parts <= share:
            return f"{strategy}, checkpointing, {parts_by}={parts}"
    return "does not fit"


def _global_batch(recipe_name: str) -> int:
    """The recipe's own ``data.batch_size``, as written."""
    import yaml

    return int(yaml.safe_load((REPO / "recipes" / f"{recipe_name}.yaml").read_text())["data"]["batch_size"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--batch-sizes", nargs=2, type=int, default=(4, 8), metavar=("SMALL", "LARGE"))
    p.add_argument("--chunks", type=int, default=4, help="parts of the larger batch, accumulated or cached")
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", type=Path, help="also write the table into this file (bench/RESULTS.md)")
    args = p.parse_args()
    small, large = args.batch_sizes
    header = ["recipe", "parameters (M)", "training state (MB)", f"step at {small} (MB)", f"step at {large} (MB)",
              "per image (MB)", f"checkpointed at {large}", f"{args.chunks} parts at {large}", "parts by"]
    rows, fits = [], []
    for name in args.recipes:
        kind = _kind(name)
        plain = {b: measure(name, b, [], args.device) for b in (small, large)}
        checkpointed = measure(name, large, ["train.activation_checkpointing=true"], args.device)
        parts = measure(name, large, [f"train.{kind}={args.chunks}"], args.device)
        per_image = (plain[large]["step_mb"] - plain[small]["step_mb"]) / (large - small)
        base = plain[large]["step_mb"]
        row = [name, f"{plain[large]['parameters'] / 1e6:.1f}", f"{plain[large]['state_mb']:.0f}",
               f"{plain[small]['step_mb']:.0f}", f"{base:.0f}", f"{per_image:.1f}",
               f"{checkpointed['step_mb']:.0f} ({checkpointed['step_mb'] / base:.2f}x)",
               f"{parts['step_mb']:.0f} ({parts['step_mb'] / base:.2f}x)", kind]
        rows.append(row)
        print(" | ".join(row), flush=True)
        batch = _global_batch(name)
        ratio = checkpointed["step_mb"] / base
        fits.append([name, batch, *(fit(batch, gpus, plain[large]["state_mb"], per_image, ratio, kind)
                                    for gpus in (1, 8, 64))])
    sys.path.insert(0, str(REPO / "bench"))
    from reporting import machine, table, write_section

    lines = ["### Training memory per ImageNet recipe", "",
             f"Measured by `python bench/train_memory.py {' '.join(sys.argv[1:])}` on {machine()}.", "",
             "Synthetic 224 px images; each cell one step in a fresh process after a first step; the step's peak "
             "above the training state (parameters, gradients, optimizer moments, target network).", "",
             *table(header, rows), "",
             "Computed from these numbers (fp32 activations as measured here; bf16 autocast on a GPU needs about "
             "half): the cheapest settings under which each recipe's global batch trains on GPUs of 80 GB "
             "(90% usable), to be replaced by a GPU measurement.", "",
             *table(["recipe", "global batch", "1 GPU", "8 GPUs", "64 GPUs"], fits)]
    print("\n".join(lines))
    if args.results:
        write_section(args.results, f"train memory ({args.device})", "\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
    else:
        main()
