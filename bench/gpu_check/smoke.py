"""(a) Crash smoke: every shipped method trains a few bf16 steps on the device and its evaluators run.

Each recipe in ``recipes.smoke_selection`` trains ``smoke_steps`` steps (the ImageNet recipes on synthetic
256 px images at a small batch, the Fashion-MNIST recipes on Fashion-MNIST), with the health monitor on a
small sample, then kNN, linear-probe and online-probe evaluation on small labeled banks. Passes when the
run finishes, its loss is finite and every evaluator reported a number.
"""

from __future__ import annotations

import math
from typing import Any

from gpu_check import probe, recipes
from gpu_check.context import Context
from gpu_check.record import Section

# What each evaluator adds to the run's final metrics.
EVALUATED = ("knn_top1", "linear_top1", "online_top1")


def planned(ctx: Context) -> list[recipes.Planned]:
    scale = ctx.scale
    bank, test = scale.eval_images
    selected = [r for r in recipes.smoke_selection(recipes.shipped())
                if scale.smoke_only is None or r.name in scale.smoke_only]
    out = []
    for recipe in selected:
        batch = scale.smoke_batch[recipe.kind]
        out.append(recipes.short_run(
            recipe.name, recipe, ctx, scale.smoke_steps, batch, images=batch * scale.smoke_steps, noise=False,
            extra=["health.enabled=true", f"health.samples={batch}", f"health.batch_size={batch}"],
            callbacks=recipes.evaluators(recipe, bank, test, ctx.fmnist_root)))
    return out


def smoke_one(planned: recipes.Planned, ctx: Context) -> dict[str, Any]:
    steps = ctx.scale.smoke_steps
    run = probe.train(planned, probe.Watch(ctx.device, warmup=0, steps=steps, timed=False), log=ctx.train_log)
    summary = dict(run.summary)
    loss = summary.get("loss")
    missing = [key for key in EVALUATED if not any(k.startswith(key) for k in summary)]
    problems = []
    if run.step != steps:
        problems.append(f"trained {run.step} steps, not {steps}")
    if not isinstance(loss, float) or not math.isfinite(loss):
        problems.append(f"loss {loss}")
    if missing:
        problems.append(f"no result from {', '.join(missing)}")
    record = {"recipe": planned.recipe.name, "method": planned.recipe.method, "data": planned.recipe.kind,
              "steps": run.step, "batch": planned.batch, "loss": loss,
              "evaluation": {k: v for k, v in summary.items() if k != "loss"}}
    if problems:
        record.update(ok=False, error="; ".join(problems))
    return record


def run(section: Section, ctx: Context) -> None:
    for item in planned(ctx):
        section.run(item.item, lambda item=item: smoke_one(item, ctx), ctx.scale.item_limit_s)
