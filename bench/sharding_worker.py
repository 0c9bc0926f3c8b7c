"""One process of bench/sharding.py: train a recipe's steps with its strategy, report time and memory.
Usage (under torchrun): ``sharding_worker.py OUT.json WARMUP STEPS RECIPE [OVERRIDES]``."""

import json
import resource
import statistics
import sys
import time

import torch

import clrun
from clrun import distributed
from clrun.training.run import Run
from clrun.training.setup import prepare
from clrun.training.step import Step

out, warmup, steps, recipe_path, *overrides = sys.argv[1:]
warmup, steps = int(warmup), int(steps)
recipe = clrun.load_recipe(recipe_path, overrides)
device = torch.device(recipe.train.device if recipe.train.device != "auto" else "cpu")
if device.type == "cuda":
    device = torch.device("cuda", distributed.local_rank())
distributed.start(device.type)
setup = prepare(recipe, "train", device)  # sharded or DDP-wrapped as the recipe's strategy says
parts = setup.parts
run = Run(recipe, parts, device, None, setup.steps_per_epoch)
train_step = Step(run, recipe.train.precision, torch.amp.GradScaler(device.type, enabled=False), None)
times, batches = [], iter(setup.loader)
for step in range(warmup + steps):
    images, _ = next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run.step = step
    train_step(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if step >= warmup:
        times.append(time.perf_counter() - start)


def local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


params = [p for g in parts.optimizer.param_groups for p in g["params"]]
held = sum(local_bytes(p) + (local_bytes(p.grad) if p.grad is not None else 0) for p in params)
held += sum(local_bytes(v) for s in parts.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
if device.type == "cuda":
    peak = torch.cuda.max_memory_allocated(device) / 1e6
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux
if distributed.is_main():
    with open(out, "w") as f:
        json.dump({"step_s": statistics.median(times), "held_mb": held / 1e6, "peak_mb": peak}, f)
distributed.stop()
distributed.exit_process(0)  # without the interpreter's finalization: see clrun.distributed.exit_process
