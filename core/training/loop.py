"""The training loop. Read it top to bottom: build, (resume), epochs of steps, callbacks, checkpoints."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from clrun.errors import UserError
from clrun.health.monitor import AlarmAction, HealthMonitor
from clrun.plugin_manager import ClrunPluginManager
from clrun.hookspecs import RunSpecs
from clrun.recipe import Recipe, resolved
from clrun.training import checkpoint, run_dir
from clrun.training.artifacts import RunArtifacts
from clrun.training.build import build_parts
from clrun.training.reporting import Console, MetricsLog
from clrun.training.run import Run
from clrun.training.step import NonFiniteLossError, train_step


def train(recipe: Recipe, resume: str | Path | None = None) -> Run:
    """Train ``recipe``; with ``resume`` (a run folder or checkpoint), continue that run in its folder."""
    seed_everything(recipe.seed)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    device = resolve_device(recipe.train.device)

    # Data first: a missing data root must stop the run before anything else is built or written.
    dataset = recipe.data.dataset.build()
    sampler_rng = torch.Generator()
    loader = make_loader(recipe, dataset, sampler_rng, device)
    parts = build_parts(recipe, example_batch(dataset), device, steps_per_epoch=len(loader))
    callbacks = [spec.build() for spec in recipe.callbacks]
    # Called in this order: the recipe's callbacks and the health monitor add their metrics before the
    # metrics file and the console see them; the alarm acts once the epoch is recorded; the report last.
    builtins = [MetricsLog(), Console(recipe.train.progress)]
    if recipe.health.enabled:
        monitor = HealthMonitor(recipe.health, dataset, recipe.seed)
        builtins = [monitor, *builtins, AlarmAction(monitor)]
    hooks = run_hooks([*callbacks, *builtins, RunArtifacts()])

    # Only now, with everything built, is the run folder created (or the resumed one reopened).
    if resume:
        saved = checkpoint.find(resume)
        state, directory = checkpoint.load(saved), saved.parent
    else:
        state, directory = None, run_dir.create(recipe.run.dir, recipe.run.name or Path(recipe.source).stem)
    run = Run(recipe, parts, device, directory, steps_per_epoch=len(loader))
    if state is not None:
        restore(run, state, saved, callbacks)
    else:
        run_dir.write_recipe(directory, resolved(recipe))
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.train.precision == "fp16")

    hooks.clrun_run_start(run=run)
    try:
        epoch_metrics: dict[str, float] = {}
        while run.epoch < recipe.train.epochs and not reached_max_steps(run):
            sampler_rng.manual_seed(recipe.seed * 100_003 + run.epoch)  # data order depends on the epoch only
            sums: dict[str, float] = defaultdict(float)
            steps, started = 0, time.time()
            for images, labels in loader:
                try:
                    metrics, outputs = train_step(parts, images, device, recipe.train.precision, scaler, recipe.train.grad_clip, run.step)
                except NonFiniteLossError as exc:
                    saved = (directory / checkpoint.FILE).is_file()
                    where = f"the last good checkpoint is in {directory}" if saved else "no checkpoint was written yet"
                    raise NonFiniteLossError(
                        f"{exc} at epoch {run.epoch + 1}, step {run.step + 1}; the optimizer step was not taken and "
                        f"{where}. Lower optimizer.lr, set train.grad_clip, or use train.precision=fp32"
                    ) from None
                run.step += 1
                steps += 1
                hooks.clrun_step_outputs(run=run, outputs=outputs, labels=labels)
                del outputs  # the step's activations: free them before the next step
                hooks.clrun_step_end(run=run, step=run.step, metrics=metrics)
                for k, v in metrics.items():
                    sums[k] += v
                if reached_max_steps(run):
                    break
            run.epoch += 1
            elapsed = time.time() - started
            epoch_metrics = {k: v / max(steps, 1) for k, v in sums.items()}
            epoch_metrics.update(images_per_s=steps * recipe.data.batch_size / elapsed, epoch_time_s=elapsed)
            hooks.clrun_epoch_end(run=run, epoch=run.epoch, metrics=epoch_metrics)
            if run.epoch % recipe.train.checkpoint_every == 0:
                save(run, callbacks)
        if run.epoch % recipe.train.checkpoint_every != 0:
            save(run, callbacks)
        final = {k: v for k, v in epoch_metrics.items() if k in ("loss",)}
        hooks.clrun_run_end(run=run, metrics=final)
        run.summary = final
    except BaseException as exc:
        hooks.clrun_run_error(run=run, error=exc)
        raise
    return run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: no CUDA device is available here; use train.device=cpu or auto")
    return device


def make_loader(recipe: Recipe, dataset: Dataset, rng: torch.Generator, device: torch.device) -> DataLoader:
    data = recipe.data
    if len(dataset) == 0:
        raise UserError(f"{recipe.data.dataset.where}: error: data.dataset: the data set is empty")
    if data.drop_last and len(dataset) < data.batch_size:
        raise UserError(
            f"{recipe.data.dataset.where}: error: data.batch_size: {data.batch_size} is more than the data set's "
            f"{len(dataset)} images, so no full batch can be made; lower data.batch_size"
        )
    return DataLoader(
        dataset, batch_size=data.batch_size, sampler=RandomSampler(dataset, generator=rng), num_workers=data.num_workers, drop_last=data.drop_last,
        pin_memory=device.type == "cuda", persistent_workers=data.num_workers > 0,
    )


def example_batch(dataset: Dataset, size: int = 4) -> torch.Tensor:
    """A few images to measure view sizes and the backbone's width with."""
    return torch.stack([dataset[i][0] for i in range(min(size, len(dataset)))])


def run_hooks(callbacks: list) -> object:
    """A per-run hook relay that calls ``callbacks`` in list order (pluggy calls the last registered
    first, so they are registered in reverse): recipe callbacks add their metrics before the metrics
    file and the console, which come last, see them."""
    pm = ClrunPluginManager(RunSpecs)
    try:
        for i, cb in reversed(list(enumerate(callbacks))):
            pm.register(cb, name=f"callback-{i}-{type(cb).__name__}")
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UserError(
            f"a callback does not match cl-run's run hooks (a misspelled hook name, or arguments the hook "
            f"does not have?): {exc}"
        ) from None
    return pm.hook


def reached_max_steps(run: Run) -> bool:
    return run.recipe.train.max_steps is not None and run.step >= run.recipe.train.max_steps


def save(run: Run, callbacks: list = ()) -> None:
    """Write the checkpoint, unless a callback holds checkpoints (the state may be collapsing)."""
    if run.checkpoint_hold is not None:
        return
    parts = run.parts
    state = {
        "format": 1,
        "epoch": run.epoch,
        "step": run.step,
        "network": parts.network.state_dict(),
        "target": parts.target.state_dict() if parts.target is not None else None,
        "loss": parts.loss_fn.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
        "rng": checkpoint.rng_state(),
        "callbacks": callback_states(callbacks),
    }
    checkpoint.save_atomic(state, run.directory / checkpoint.FILE)
    run.checkpoint_epoch = run.epoch


def callback_states(callbacks: list) -> dict[str, Any]:
    """The state of every callback that has one (``state_dict``), keyed by position and class name."""
    return {callback_key(i, cb): cb.state_dict() for i, cb in enumerate(callbacks) if hasattr(cb, "state_dict")}


def callback_key(index: int, callback: object) -> str:
    return f"{index}:{type(callback).__name__}"


def restore(run: Run, state: dict, source: str | Path = "the checkpoint", callbacks: list = ()) -> None:
    """Load a checkpoint into a freshly built run; a checkpoint from a different recipe is a user error
    that names the part that does not fit, never a raw size-mismatch traceback."""
    parts = run.parts
    refit = "resume with the recipe the run was started with (recipe.yaml in its run folder)"
    for key, module in (("network", parts.network), ("target", parts.target), ("loss", parts.loss_fn)):
        saved = state.get(key)
        if module is None and saved is None:
            continue
        if saved is None:
            raise UserError(f"--resume: {source}: the recipe has a `target:` section but the checkpoint has no "
                            f"target network; {refit}")
        if module is None:
            raise UserError(f"--resume: {source}: the checkpoint has a target network but the recipe has no "
                            f"`target:` section; {refit}")
        try:
            module.load_state_dict(saved)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())
            raise UserError(f"--resume: {source}: its {key} state does not fit this recipe ({detail}); {refit}") from None
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.scheduler is not None and state["scheduler"] is not None:
        parts.scheduler.load_state_dict(state["scheduler"])
    saved_callbacks = state.get("callbacks") or {}
    for key, cb in ((callback_key(i, cb), cb) for i, cb in enumerate(callbacks)):
        if hasattr(cb, "load_state_dict"):
            if key not in saved_callbacks:
                raise UserError(f"--resume: {source}: it holds no state for callback {key}; {refit}")
            cb.load_state_dict(saved_callbacks[key])
    checkpoint.set_rng_state(state["rng"])
    run.epoch, run.step = int(state["epoch"]), int(state["step"])
    run.checkpoint_epoch = run.epoch
