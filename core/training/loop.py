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
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from clrun import distributed

from clrun.errors import TrainingHalted, UserError
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
from clrun.training.trainable import Trainable, distribute


def train(recipe: Recipe, resume: str | Path | None = None) -> Run:
    """Train ``recipe``; with ``resume`` (a run folder or checkpoint), continue that run in its folder.

    Under torchrun every process calls this: it joins the process group, trains its share of each
    batch, and rank 0 alone writes the run folder, logs and reports.
    """
    device = resolve_device(recipe.train.device)
    started = distributed.start(device.type)
    if distributed.active() and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank())
    run = _train(recipe, resume, device)
    # Only after a clean finish: after an error the other ranks may be stuck in a collective, and
    # with NCCL a graceful shutdown can wait for them. Exiting lets torchrun stop the whole group.
    if started:
        distributed.stop()
    return run


def _train(recipe: Recipe, resume: str | Path | None, device: torch.device) -> Run:
    seed_everything(recipe.seed)  # the same on every rank: every rank builds the same initial weights
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    main = distributed.is_main()

    # Data first: a missing data root must stop the run before anything else is built or written.
    dataset = recipe.data.dataset.build()
    sampler_rng = torch.Generator()
    loader = make_loader(recipe, dataset, sampler_rng, device)
    parts = build_parts(recipe, example_batch(dataset), device, steps_per_epoch=len(loader))
    # Rank 0 alone runs the recipe's callbacks and writes; the health monitor runs on every rank (its
    # forward passes take part in SyncBatchNorm's collectives) so that every rank's alarm agrees.
    callbacks = [spec.build() for spec in recipe.callbacks] if main else []
    builtins = [MetricsLog(), Console(recipe.train.progress)] if main else []
    if recipe.health.enabled:
        monitor = HealthMonitor(recipe.health, dataset, recipe.seed)
        builtins = [monitor, *builtins, AlarmAction(monitor)]
    hooks = run_hooks([*callbacks, *builtins, *([RunArtifacts()] if main else [])])

    # Only now, with everything built, is the run folder created (or the resumed one reopened).
    if resume:
        saved = checkpoint.find(resume)
        state, directory = checkpoint.load(saved), saved.parent
    else:
        state = None
        directory = run_dir.create(recipe.run.dir, recipe.run.name or Path(recipe.source).stem) if main else None
        directory = distributed.broadcast_object(directory)
    run = Run(recipe, parts, device, directory, steps_per_epoch=len(loader))
    if state is not None:
        restore(run, state, saved, callbacks)
    else:
        if main:
            run_dir.write_recipe(directory, resolved(recipe))
        seed_augmentations(recipe.seed)
    parts.trainable = distribute(Trainable(parts.network, parts.loss_fn), device)
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.train.precision == "fp16")

    hooks.clrun_run_start(run=run)
    try:
        epoch_metrics: dict[str, float] = {}
        while run.epoch < recipe.train.epochs and not reached_max_steps(run):
            set_epoch(loader, sampler_rng, recipe.seed, run.epoch)  # data order depends on the epoch only
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
            end_epoch(hooks, run, epoch_metrics)
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


def end_epoch(hooks, run: Run, metrics: dict[str, float]) -> None:
    """The epoch-end hooks, then the ranks agree on whether to go on: rank 0 runs the callbacks and
    every rank the health alarm, so a halt or an error on any rank must stop all of them together."""
    failure: Exception | None = None
    try:
        hooks.clrun_epoch_end(run=run, epoch=run.epoch, metrics=metrics)
    except Exception as exc:  # re-raised below, once every rank knows
        failure = exc
    if not distributed.active():
        if failure is not None:
            raise failure
        return
    reasons = distributed.gather_objects(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    stopped = [(rank, reason) for rank, reason in enumerate(reasons) if reason is not None]
    if stopped:
        rank, reason = stopped[0]
        raise TrainingHalted(f"process {rank} stopped the run at epoch {run.epoch}: {reason}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_augmentations(seed: int) -> None:
    """After the (identical) build, each rank draws its own augmentations; rank 0 keeps the stream a
    single-process run has."""
    rank = distributed.rank()
    if rank:
        seed_everything(seed + 1_000_003 * rank)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: no CUDA device is available here; use train.device=cpu or auto")
    return device


def make_loader(recipe: Recipe, dataset: Dataset, rng: torch.Generator, device: torch.device) -> DataLoader:
    """Batches of ``data.batch_size`` images, or with N processes each rank's ``batch_size / N`` share of
    a global batch (a distributed sampler gives every rank a disjoint part of the data)."""
    data = recipe.data
    world = distributed.world_size()
    if len(dataset) == 0:
        raise UserError(f"{recipe.data.dataset.where}: error: data.dataset: the data set is empty")
    if data.batch_size % world:
        raise UserError(
            f"{recipe.data.dataset.where}: error: data.batch_size: {data.batch_size} does not split evenly over "
            f"{world} processes; use a multiple of {world} (the batch size is the global batch, each process "
            f"takes batch_size / {world} images)"
        )
    if data.drop_last and len(dataset) < data.batch_size:
        raise UserError(
            f"{recipe.data.dataset.where}: error: data.batch_size: {data.batch_size} is more than the data set's "
            f"{len(dataset)} images, so no full batch can be made; lower data.batch_size"
        )
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=distributed.rank(), shuffle=True,
                                     seed=recipe.seed, drop_last=True)
    else:
        sampler = RandomSampler(dataset, generator=rng)
    return DataLoader(
        dataset, batch_size=data.batch_size // world, sampler=sampler, num_workers=data.num_workers,
        drop_last=data.drop_last, pin_memory=device.type == "cuda", persistent_workers=data.num_workers > 0,
    )


def set_epoch(loader: DataLoader, rng: torch.Generator, seed: int, epoch: int) -> None:
    """Seed the epoch's data order: from the seed and the epoch only, so a resumed run sees the same order."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    else:
        rng.manual_seed(seed * 100_003 + epoch)


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
    """Write the checkpoint (rank 0), unless a callback holds checkpoints (the state may be collapsing).

    Every rank calls it: the random states of all ranks are gathered, so that a resumed distributed
    run draws the augmentations it would have drawn."""
    rng_states = distributed.gather_objects(checkpoint.rng_state())
    if run.checkpoint_hold is not None or not distributed.is_main():
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
        "rng": rng_states[0],
        "rng_ranks": rng_states if len(rng_states) > 1 else [],
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
    per_rank = state.get("rng_ranks") or []
    if len(per_rank) == distributed.world_size():
        checkpoint.set_rng_state(per_rank[distributed.rank()])
    else:  # saved by a run with another number of processes: rank 0 continues its stream
        checkpoint.set_rng_state(state["rng"])
        seed_augmentations(run.recipe.seed + int(state["step"]))
    run.epoch, run.step = int(state["epoch"]), int(state["step"])
    run.checkpoint_epoch = run.epoch
