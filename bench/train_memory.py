"""Memory of training each ImageNet recipe: the training state, the activations each image adds, what
activation checkpointing and a batch in parts save, and the settings under which each recipe's global batch
fits on 1, 8 and 64 GPUs of 80 GB (computed from those numbers, until a GPU run measures them).

For each recipe (its data replaced by synthetic 224 px images, everything else as written), in a fresh process:

* training state: after one optimizer step, the bytes of every parameter, gradient, optimizer state tensor,
  buffer and target-network tensor (counted, exact);
* activations: the tensors the forward pass (networks and loss) keeps for the backward pass, counted by
  ``torch.autograd.graph.saved_tensors_hooks`` (each storage once, the weights left out; with checkpointing,
  the inputs each checkpointed block keeps for its recomputation too) at two batch sizes:
  their difference over the images added is the memory per image; again with the backbone's activation
  checkpointing on. A count, not a sampled peak: the same on any machine for the same dtypes (fp32 here; bf16
  autocast keeps about half), without the allocator's slack or the backward pass's transient buffers.

A batch in N parts (``train.accumulate_steps`` or ``train.grad_cache_chunks``) keeps one part's activations: the
per-image memory times the share over N (gradient caching adds the whole share's outputs, a few KB per image).

    python bench/train_memory.py                      # every ImageNet recipe on the CPU: a few minutes
    python bench/train_memory.py --recipes dino_vits16 --results bench/RESULTS.md
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
MB = 2**20
GPU_MB, USABLE = 80 * 1024, 0.9  # an 80 GB GPU, of which the CUDA context and the allocator's slack leave ~90%


def measure(recipe: str, small: int, large: int) -> dict:
    """One recipe's numbers, from a fresh process (``_child``)."""
    done = subprocess.run([sys.executable, __file__, "--child", recipe, str(small), str(large)],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{recipe}: failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(recipe_name: str, small: int, large: int) -> None:
    import torch

    from clrun.recipe import load_recipe
    from clrun.training.forward import forward_and_loss
    from clrun.training.run import Run
    from clrun.training.setup import prepare
    from clrun.training.split.per_image import is_per_image_mean
    from clrun.training.step import Step

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.yaml"
        data.write_text(SYNTHETIC.format(images=large, batch=large))
        recipe = load_recipe(REPO / "recipes" / f"{recipe_name}.yaml", ["train.device=cpu", "train.progress=false"],
                             sections_from=data)
        setup = prepare(recipe, "train", torch.device("cpu"))
    parts = setup.parts
    run = Run(recipe, parts, setup.device, None, steps_per_epoch=1)
    images = next(iter(setup.loader))[0]
    Step.of(run)(images[:small])  # the optimizer's state exists after a step
    weights = {p.untyped_storage().data_ptr() for p in parts.trainable.parameters()}

    def nbytes(tensors) -> int:
        return sum(t.untyped_storage().nbytes() for t in {t.untyped_storage().data_ptr(): t for t in tensors}.values())

    optimizer_state = [v for s in parts.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    state = (nbytes(parts.trainable.parameters()) + nbytes(p.grad for p in parts.trainable.parameters() if p.grad is not None)
             + nbytes(optimizer_state) + nbytes(parts.trainable.buffers())
             + (nbytes([*parts.target.parameters(), *parts.target.buffers()]) if parts.target is not None else 0))

    def kept(batch: int) -> int:
        """Bytes the forward pass keeps for the backward pass, on ``batch`` images."""
        saved: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        def checkpoint(function, *args, **kwargs):  # a checkpointed block keeps its input for the recomputation
            for t in args:
                if torch.is_tensor(t):
                    pack(t)
            return original(function, *args, **kwargs)

        original = torch.utils.checkpoint.checkpoint
        torch.manual_seed(0)
        torch.utils.checkpoint.checkpoint = checkpoint
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                result, _ = forward_and_loss(parts, images[:batch], setup.device, 1)
        finally:
            torch.utils.checkpoint.checkpoint = original
        del result
        return sum(saved.values())

    plain = {b: kept(b) for b in (small, large)}
    parts.network.backbone.set_grad_checkpointing(True)
    checkpointed = {b: kept(b) for b in (small, large)}
    print(json.dumps({
        "parameters": sum(p.numel() for p in parts.network.parameters()), "state_mb": state / MB,
        "per_image_mb": (plain[large] - plain[small]) / (large - small) / MB,
        "checkpointed_per_image_mb": (checkpointed[large] - checkpointed[small]) / (large - small) / MB,
        "parts_by": "accumulate_steps" if is_per_image_mean(parts.loss_fn) else "grad_cache_chunks",
    }))


def fit(global_batch: int, gpus: int, numbers: dict) -> str:
    """The cheapest settings under which ``global_batch`` trains on ``gpus`` GPUs of 80 GB (90% usable): DDP
    keeps the whole state on each, FSDP 1/N of it; then activation checkpointing; then the share in parts."""
    share, budget = global_batch / gpus, GPU_MB * USABLE
    for strategy, state in (("ddp", numbers["state_mb"]), ("fsdp", numbers["state_mb"] / gpus)):
        room = budget - state
        if (strategy == "fsdp" and gpus == 1) or room <= 0:
            continue
        for label, per_image in (("", numbers["per_image_mb"]), (", checkpointing", numbers["checkpointed_per_image_mb"])):
            parts = int(-(-share * per_image // room))  # ceil
            if parts <= 1:
                return strategy + label
            if parts <= share and label:
                return f"{strategy}{label}, {numbers['parts_by']}={parts}"
    return "does not fit"


def _global_batch(recipe_name: str) -> int:
    import yaml

    return int(yaml.safe_load((REPO / "recipes" / f"{recipe_name}.yaml").read_text())["data"]["batch_size"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--batch-sizes", nargs=2, type=int, default=(2, 4), metavar=("SMALL", "LARGE"))
    p.add_argument("--results", type=Path, help="also write the tables into this file (bench/RESULTS.md)")
    args = p.parse_args()
    rows, fits = [], []
    for name in args.recipes:
        n = measure(name, *args.batch_sizes)
        ratio = n["checkpointed_per_image_mb"] / n["per_image_mb"]
        rows.append([name, f"{n['parameters'] / 1e6:.1f}", f"{n['state_mb']:.0f}", f"{n['per_image_mb']:.1f}",
                     f"{n['checkpointed_per_image_mb']:.1f} ({ratio:.2f}x)", n["parts_by"]])
        batch = _global_batch(name)
        fits.append([name, batch, *(fit(batch, gpus, n) for gpus in (1, 8, 64))])
        print(" | ".join(map(str, rows[-1])), flush=True)
    sys.path.insert(0, str(REPO / "bench"))
    from reporting import machine, table, write_section

    lines = ["### Training memory per ImageNet recipe", "",
             f"Measured by `python bench/train_memory.py {' '.join(sys.argv[1:])}` on {machine()}: synthetic 224 px "
             "images, fp32; state and activations counted as the script's docstring says.", "",
             *table(["recipe", "parameters (M)", "training state (MB)", "activations per image (MB)",
                     "checkpointed (MB per image)", "batch in parts by"], rows), "",
             "Computed from those numbers (fp32 activations; bf16 autocast keeps about half): the cheapest settings "
             "under which each recipe's global batch trains on GPUs of 80 GB (90% usable). Not yet measured on GPUs.",
             "", *table(["recipe", "global batch", "1 GPU", "8 GPUs", "64 GPUs"], fits)]
    print("\n".join(lines))
    if args.results:
        write_section(args.results, "train memory (cpu)", "\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
