"""Pipeline efficiency: cl-run's training throughput against the model-only limit.

    python bench/pipeline.py                                    # CPU defaults: about 3 minutes on 2 cores
    python bench/pipeline.py --repeats 5 --results bench/RESULTS.md
    python bench/pipeline.py --device cuda --backbone resnet18 --batch-size 512 --warmup 20 --steps 200

The limit is what the model alone allows: the same network (backbone + projector), NT-Xent, backward and
optimizer step, on one batch of views made before the clock starts and kept on the device. It has no data
loading, no augmentation, no per-step host sync: no training pipeline can beat it. cl-run / limit is the
fraction of the model's speed that cl-run's whole pipeline keeps. Target: >= 0.9.
"""

from __future__ import annotations

from typing import Any

import torch

from clrun_timed import compare_throughput
from common import StepWindow, autocast, measured
from handwritten import build
from reporting import verdict

TARGET = 0.9


def train_model_only(cfg: dict[str, Any], device: torch.device, precision: str, window: StepWindow) -> dict[str, Any]:
    """Forward, loss, backward and update of the recipe's network on ready views, ``window.total`` times."""
    run = build(cfg, device, window.total)
    images, _ = next(iter(run.loader))
    views = run.views(images, device)  # once: the same augmented batch every step
    for step in range(1, window.total + 1):
        with autocast(device, precision):
            loss = run.loss(views)
        run.update(loss)
        window.step_done(step)
    return measured(window, cfg["data"]["batch_size"], run.network)


def judge(clrun_speed: float, limit: float) -> str:
    efficiency = clrun_speed / limit
    return verdict("cl-run / model-only limit", f"{efficiency:.3f}", ">= 0.9", efficiency >= TARGET)


if __name__ == "__main__":
    compare_throughput(__doc__, "pipeline", "Pipeline efficiency: cl-run against the model-only limit",
                       "model only (ready views)", train_model_only, judge)
