"""Optimizers: torch.optim's as ``torch/<Name>``, plus timm's LARS and LAMB for large-batch training."""

from __future__ import annotations

import inspect

import timm.optim
import torch

from clrun import Component, hookimpl


def _torch_optimizers() -> dict[str, type]:
    return {
        name: cls
        for name, cls in vars(torch.optim).items()
        if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
    }


@hookimpl
def clrun_components():
    components = [
        Component("optimizer", f"torch/{name}", cls, f"torch.optim.{name}") for name, cls in _torch_optimizers().items()
    ]
    components += [
        Component("optimizer", "timm/lars", timm.optim.Lars,
                  "LARS (You et al. 2017), SimCLR's large-batch optimizer; parameters without weight decay skip adaptation"),
        Component("optimizer", "timm/lamb", timm.optim.Lamb, "LAMB (You et al. 2019), layer-wise adaptive Adam"),
    ]
    return components
