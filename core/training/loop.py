"""The training loop. Read it top to bottom: set up, open the run folder (or resume), epochs of steps,
callbacks, checkpoints."""

from __future__ import annotations

import datetime
import math
import signal
from collections import defaultdict
from pathlib import Path

import pluggy
import torch

from clrun import distributed
from clrun.recipe import Recipe
from clrun.training.callbacks import recipe_callbacks
from clrun.training.checkpointing import Checkpointer, Position, open_run, restart
from clrun.training.data import DataWait, batches, set_epoch
from clrun.training.callbacks.hooks import builtin_callbacks, end_epoch, run_hooks
from clrun.training.evaluation_wait import EvaluationWait
from clrun.training.run import Run
from clrun.training.setup import Setup, prepare, resolve_device
from clrun.training.parallel.sharding import whole_weights
from clrun.training.step import NonFiniteLossError, Step
from clrun.training.step_metrics import PendingSteps, default_log_every
from clrun.training.stop import StopOnSignal, Stopped


def train(recipe: Recipe, resume: str | Path | None = None, verbose: bool = False,
          allow_changes: bool = False) -> Run:
    """Train ``recipe``; with ``resume`` (a run folder or checkpoint), continue that run in its folder
    (``allow_changes``: also with a recipe that changes the training; see ``clrun.training.checkpointing.policy``).
    ``verbose`` prints every metric each epoch instead of the compact line.

    Under torchrun every process calls this: it joins the process group, trains its share of each
    batch, and rank 0 alone writes the run folder, logs and reports.
    """
    device = resolve_device(recipe.train.device)
    started = distributed.start(device.type)
    if distributed.active() and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank())
    resume = restart.to_resume(recipe, resume)
    # init: starts a new run only: a resumed one continues from its checkpoint (and the file may be gone).
    run = _train(prepare(recipe, "train", device, initialize=resume is None), resume, verbose, allow_changes)
    # Only after a clean finish: after an error the other ranks may be stuck in a collective, and
    # with NCCL a graceful shutdown can wait for them. Exiting lets torchrun stop the whole group.
    if started:
        distributed.stop()
    return run


def _train(setup: Setup, resume: str | Path | None, verbose: bool, allow_changes: bool) -> Run:
    recipe = setup.recipe
    # The recipe's callbacks exist on rank 0 only (see clrun.hookspecs.RunSpecs).
    callbacks, named = recipe_callbacks.build(recipe.callbacks) if distributed.is_main() else ([], [])
    hooks = run_hooks([*named, *builtin_callbacks(recipe, setup.dataset, verbose)])
    # Only now, with everything built, is the folder touched (and a resumed run's checkpoint restored).
    with open_run(setup, resume, callbacks, allow_changes) as (run, checkpointer):
        # Every process makes it here, before any evaluation: it creates a process group (a collective).
        evaluations = EvaluationWait(datetime.timedelta(minutes=recipe.train.evaluation_timeout_minutes))
        return _epochs(setup, run, hooks, checkpointer, evaluations)


def _epochs(setup: Setup, run: Run, hooks: pluggy.HookRelay, checkpointer: Checkpointer,
            evaluations: EvaluationWait) -> Run:
    with whole_weights(run):  # a callback may embed images before training (clrun.space's first map)
        hooks.clrun_run_start(run=run)
    try:
        with StopOnSignal(evaluations.group) as stop:
            epoch_metrics = _train_epochs(setup, run, hooks, checkpointer, stop, evaluations)
        final = {k: v for k, v in epoch_metrics.items() if k in ("loss",)}
        with whole_weights(run):
            hooks.clrun_run_end(run=run, metrics=final)
        evaluations.wait("the run's end")  # rank 0 ran the evaluators in those hooks
        run.summary = final
    except BaseException as exc:
        hooks.clrun_run_error(run=run, error=exc)
        raise
    return run


def _train_epochs(setup: Setup, run: Run, hooks: pluggy.HookRelay, checkpointer: Checkpointer,
                  stop: StopOnSignal, evaluations: EvaluationWait) -> dict[str, float]:
    recipe, loader = setup.recipe, setup.loader
    train_step = Step.of(run)  # precision, loss scaling and clipping as the recipe sets them; the index is run.step
    every_steps = recipe.train.checkpoint_every_steps
    log_every = recipe.train.log_every or default_log_every(run.device)
    epoch_metrics: dict[str, float] = {}
    pending = PendingSteps()  # steps whose metrics are still on the device (clrun.training.step_metrics)
    try:
        while run.epoch < recipe.train.epochs and not reached_max_steps(run):
            start = checkpointer.position_in_epoch()  # batch 0, or where a resumed mid-epoch checkpoint stopped
            set_epoch(loader, setup.sampler_rng, recipe.seed, run.epoch, start.batches)  # the order depends on the epoch only
            loader_iterator = iter(loader)  # draws a seed from the global random stream, so only now...
            checkpointer.continue_streams()  # ...are a mid-epoch checkpoint's random streams set
            done, sums, waited = start.batches, defaultdict(float, start.sums), DataWait()
            steps = done  # batches of this epoch trained so far

            def read_metrics() -> None:
                """The pending steps' metrics, read at once: their step-end hooks, in order, and the epoch sums; a
                non-finite loss among them stops the run here."""
                for record in pending.read():
                    loss = record.metrics["loss"]
                    if not math.isfinite(loss):
                        raise explain_non_finite(loss, record.step, record.epoch, run, checkpointer.latest)
                    hooks.clrun_step_end(run=run, step=record.step, metrics=record.metrics)
                    for k, v in record.metrics.items():
                        sums[k] += v

            for images, labels, *places in waited.on(batches(loader_iterator, recipe.data.dataset)):
                record, outputs = train_step(images, *places)
                run.step += 1
                steps += 1
                run.step_metrics = {}
                hooks.clrun_step_outputs(run=run, outputs=outputs, labels=labels)
                record.extra_names, record.extra_values = list(run.step_metrics), list(run.step_metrics.values())
                pending.add(record)
                del outputs  # the step's activations: free them before the next step
                signum = stop.requested()  # agreed by every process, without a device read
                last = reached_max_steps(run) or steps == run.steps_per_epoch
                # Mid-epoch only: the epoch's end writes its own checkpoint.
                save = bool(every_steps) and run.step % every_steps == 0 and steps < run.steps_per_epoch
                if run.step % log_every == 0 or last or save or signum:
                    read_metrics()  # a checkpoint never holds a step whose loss was not checked
                if signum:  # a signal: checkpoint here, mid-epoch, and stop
                    checkpointer.wait()
                    raise stopped(signum, run, checkpointer.save(Position(steps, dict(sums))))
                if reached_max_steps(run):
                    break
                if save:
                    checkpointer.save(Position(steps, dict(sums)), background=True)  # written while training goes on
            read_metrics()
            run.epoch += 1
            epoch_metrics = {k: v / max(steps, 1) for k, v in sums.items()}
            epoch_metrics.update(images_per_s=(steps - done) * recipe.data.batch_size / waited.elapsed,
                                 data_wait=waited.fraction, epoch_time_s=waited.elapsed)
            checkpointer.wait()  # an epoch's checkpoint replaces the step-level ones: never two writes at once
            with whole_weights(run):
                end_epoch(hooks, run, epoch_metrics, save=checkpointer.save, evaluations=evaluations)
            if run.epoch % recipe.train.checkpoint_every == 0:
                checkpointer.save()
        checkpointer.wait()
        if run.epoch % recipe.train.checkpoint_every != 0:
            checkpointer.save()
    finally:
        checkpointer.close()  # after an error: the write under way finishes (or fails) before the run ends
    return epoch_metrics


def stopped(signum: int, run: Run, kept: bool) -> Stopped:
    name = signal.Signals(signum).name
    if kept:
        what = f"checkpoint written; continue with --resume {run.directory}"
    else:
        what = (f"no checkpoint written (the collapse alarm holds them while a signal is out of range); "
                f"the last one is epoch {run.checkpoint_epoch}'s in {run.directory}")
    return Stopped(signum, f"stopped by {name} after step {run.step} (in epoch {run.epoch + 1}): {what}")


def explain_non_finite(loss: float, step: int, epoch: int, run: Run, latest: Path | None) -> NonFiniteLossError:
    """What stops the run when step ``step`` (counted from 1, in epoch ``epoch`` + 1) had a non-finite loss."""
    where = f"the last good checkpoint is in {run.directory}" if latest is not None else "no checkpoint was written yet"
    return NonFiniteLossError(
        f"the loss is {loss} at epoch {epoch + 1}, step {step}; no optimizer step was taken from that step on and "
        f"{where}. Lower optimizer.lr, set train.grad_clip, or use train.precision=fp32"
    )


def reached_max_steps(run: Run) -> bool:
    return run.recipe.train.max_steps is not None and run.step >= run.recipe.train.max_steps
