"""Learning-rate schedules (``clrun.plugins.lr_schedules``), offered by import path: listing them
imports neither torch nor timm."""

from __future__ import annotations

from clrun import Component, hookimpl


@hookimpl
def clrun_components() -> list[Component]:
    return [
        Component("scheduler", "clrun/warmup_cosine", "clrun.plugins.lr_schedules:warmup_cosine",
                  "linear warmup, then cosine decay, per step"),
        Component("scheduler", "clrun/constant", "clrun.plugins.lr_schedules:constant",
                  "constant learning rate after an optional warmup"),
    ]
