"""Optimizers and learning-rate schedules: torch.optim's optimizers as ``torch/<Name>``, timm's LARS and LAMB
for large-batch training, and cl-run's schedules (``lr_schedules``).

torch.optim's names are offered as a lazy namespace, the rest by import path, so listing components and
plugins imports neither torch nor timm.
"""

from __future__ import annotations

import inspect

from clrun import Component, LazyComponents, hookimpl

SCHEDULES = "clrun.plugins.optim.lr_schedules"


def torch_optimizers() -> dict[str, type]:
    """torch.optim's optimizer classes by name."""
    import torch  # here, not at the top: only a lookup in torch/ pays for importing torch (seconds)

    return {
        name: cls
        for name, cls in vars(torch.optim).items()
        if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
    }


def torch_optimizer_names() -> list[str]:
    return list(torch_optimizers())


def torch_optimizer(name: str) -> Component:
    """The optimizer component ``torch/<name>``."""
    return Component("optimizer", f"torch/{name}", torch_optimizers()[name], f"torch.optim.{name}")


@hookimpl
def clrun_components() -> list[Component | LazyComponents]:
    return [
        LazyComponents("optimizer", "torch", torch_optimizer_names, torch_optimizer,
                       "any torch.optim optimizer (SGD, Adam, AdamW, ...) by its class name"),
        Component("optimizer", "timm/lars", "timm.optim:Lars",
                  "LARS (You et al. 2017), SimCLR's large-batch optimizer; parameters without weight decay skip adaptation"),
        Component("optimizer", "timm/lamb", "timm.optim:Lamb", "LAMB (You et al. 2019), layer-wise adaptive Adam"),
        Component("scheduler", "clrun/warmup_cosine", f"{SCHEDULES}:warmup_cosine",
                  "linear warmup, then cosine decay, per step"),
        Component("scheduler", "clrun/constant", f"{SCHEDULES}:constant",
                  "constant learning rate after an optional warmup"),
    ]
