"""Digest of the weights a few recipes reach after N steps: the proof that a refactoring kept training bit-identical.

Run it before and after a change that must not alter training, on the same machine and versions, and
compare the two outputs (``diff``): every line must match. Each recipe trains ``--steps`` steps from its
seed with the CLI (``train.max_steps``), evaluation callbacks left out; the digest is a SHA-256 over every
tensor of the final checkpoint's online network, target and loss states, keys in sorted order, and
over the optimizer's state, so a changed update rule shows even where the weights happen to agree.

    python bench/weights_digest.py > /tmp/before.txt
    # ... the change ...
    python bench/weights_digest.py > /tmp/after.txt && diff /tmp/before.txt /tmp/after.txt
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("quickstart", "dino_fmnist", "ibot_fmnist", "mae_fmnist")


def digest(value, h) -> None:
    """Feed ``value`` (nested dicts, lists, tensors, numbers) into the hash in a fixed order."""
    if isinstance(value, torch.Tensor):
        h.update(str((value.dtype, tuple(value.shape))).encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            digest(value[key], h)
    elif isinstance(value, (list, tuple)):
        for item in value:
            digest(item, h)
    else:
        h.update(repr(value).encode())


def train(recipe: str, steps: int, batch_size: int, folder: Path) -> Path:
    run_dir = folder / recipe
    overrides = [f"train.max_steps={steps}", f"data.batch_size={batch_size}", "data.dataset.subset=512",
                 "callbacks=[]", f"run.dir={run_dir}"]
    subprocess.run([sys.executable, "-m", "clrun", str(REPO / "recipes" / f"{recipe}.yaml"), *overrides],
                   check=True, stdout=subprocess.DEVNULL)
    return run_dir


def checkpoint_state(run_dir: Path) -> dict:
    files = sorted(run_dir.rglob("*.pt"))
    if not files:
        raise SystemExit(f"no checkpoint in {run_dir}")
    return torch.load(files[-1], map_location="cpu", weights_only=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("recipes", nargs="*", default=RECIPES)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            state = checkpoint_state(train(recipe, args.steps, args.batch_size, Path(tmp)))
            for part in ("network", "target", "loss", "optimizer"):
                h = hashlib.sha256()
                digest(state[part], h)
                print(f"{recipe:14s} {part:10s} {h.hexdigest()}")


if __name__ == "__main__":
    main()
