"""(c) Throughput, peak memory and model FLOPs utilisation of training, against the model alone.

For each configuration (ResNet-50 SimCLR at 224 px, DINO ViT-S/16 multi-crop, iBOT ViT-S/16, MAE ViT-B/16):

* cl-run's training step: ``clrun.train`` on in-memory 256 px images (``bench/noise_images``: no decoding, so
  the GPU's side is what is measured), ``warmup`` untimed then ``steps`` timed steps, the device synchronized
  at both ends: images/s, and the allocator's peak over the timed steps (bytes, and per image);
* the model alone on ready tensors (``model_only.ModelOnly``): the same network, loss, backward, optimizer and
  EMA on the last step's views, made once: images/s and peak;
* FLOPs of one step, forward and backward, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
  convolutions, attention); MFU = FLOPs per step / seconds per step / the GPU's peak dense bf16 rate
  (``machine.PEAK_BF16_FLOPS``; null on the CPU and on an unlisted GPU).

``pipeline_ratio`` = training images/s / model-only images/s: the share of the model's speed the whole
pipeline keeps (the data, the views, the masks, the per-step syncs and the loop cost the rest).
"""

from __future__ import annotations

from typing import Any

from gpu_check import machine, probe, recipes
from gpu_check.context import Context
from gpu_check.model_only import ModelOnly
from gpu_check.probe import Watch
from gpu_check.record import Section
from gpu_check.scale import Measured


def planned_run(measured: Measured, ctx: Context, compile: bool = False) -> recipes.Planned:
    """``measured`` for ``warmup + steps`` steps on 256 px noise (a tiny scale's 32 px), no health monitor, no
    evaluator, ``train.compile`` as given. One epoch holds every step: an epoch's end reads the metrics from
    the device (a sync) and runs the epoch hooks, which do not belong in the timed steps."""
    steps = ctx.scale.warmup + ctx.scale.steps
    item = f"{measured.item} (compiled)" if compile else measured.item
    return recipes.short_run(item, recipes.shipped()[measured.recipe], ctx, steps, measured.batch,
                             images=measured.batch * steps, noise=True,
                             extra=["health.enabled=false", f"train.compile={str(compile).lower()}"])


def planned(ctx: Context) -> list[recipes.Planned]:
    return [planned_run(m, ctx) for m in ctx.scale.throughput_runs]


def timed_training(planned: recipes.Planned, ctx: Context, keep_views: bool = False) -> tuple[Any, Watch]:
    """One timed ``clrun.train`` run; returns the run and its watch."""
    watch = Watch(ctx.device, ctx.scale.warmup, ctx.scale.steps, keep_views=keep_views)
    return probe.train(planned, watch, log=ctx.train_log), watch


def mfu(flops_per_step: int, seconds_per_step: float, peak: float | None) -> float | None:
    return None if peak is None or not flops_per_step else flops_per_step / seconds_per_step / peak


def speed(prefix: str, seconds_per_step: float, batch: int, flops: int, peak: float | None) -> dict[str, Any]:
    """images/s, ms per step and MFU, under names that start with ``prefix``."""
    return {f"{prefix}images_per_s": batch / seconds_per_step, f"{prefix}step_ms": 1000 * seconds_per_step,
            f"{prefix}mfu": mfu(flops, seconds_per_step, peak)}


def memory(prefix: str, peak_bytes: int | None, batch: int) -> dict[str, Any]:
    """The allocator's peak (None on the CPU), whole and per image, under names that start with ``prefix``."""
    per_image = None if peak_bytes is None else peak_bytes / batch
    return {f"{prefix}peak_memory_bytes": peak_bytes, f"{prefix}peak_memory_bytes_per_image": per_image}


def measure_one(planned: recipes.Planned, ctx: Context) -> dict[str, Any]:
    scale, batch = ctx.scale, planned.batch
    run, watch = timed_training(planned, ctx, keep_views=True)
    model = ModelOnly(run, watch)
    alone = model.timed(scale.warmup, scale.steps)
    flops = model.flops()
    peak = machine.peak_flops(ctx.device)
    seconds, alone_seconds = watch.seconds_per_step(), alone["seconds_per_step"]
    record = {
        "recipe": planned.recipe.name, "batch": batch, "timed_steps": scale.steps,
        "views": [list(v.shape[-2:]) for v in watch.views],
        "parameters": sum(p.numel() for p in run.parts.network.parameters()),
        **speed("", seconds, batch, flops, peak), **memory("", watch.peak_bytes, batch),
        **speed("model_only_", alone_seconds, batch, flops, peak), **memory("model_only_", alone["peak_bytes"], batch),
        "pipeline_ratio": alone_seconds / seconds, "flops_per_step": flops, "flops_per_image": flops / batch,
        "peak_bf16_flops": peak, "log_every": getattr(run.recipe.train, "log_every", None),
        **machine.matmul_settings(ctx.device),
    }
    if not flops > 0:
        record.update(ok=False, error="the FLOP counter counted nothing")
    return record


def run(section: Section, ctx: Context) -> None:
    for item in planned(ctx):
        section.run(item.item, lambda item=item: measure_one(item, ctx), ctx.scale.item_limit_s)
