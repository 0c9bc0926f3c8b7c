"""Offers the built-in heads (``clrun.plugins.heads``) by import path: listing them does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

from clrun import Component, hookimpl

HEADS = "clrun.plugins.heads"


@hookimpl
def clrun_components() -> list[Component]:
    return [
        Component(
            "projector",
            "clrun/mlp",
            f"{HEADS}:MLPProjector",
            "SimCLR's MLP projection head g(.): Linear-BN-ReLU layers, optional output batch norm",
        ),
        Component("projector", "clrun/dino_head", "clrun.plugins.dino_head:DINOHead",
                  "DINO's head: MLP to a bottleneck, l2-normalized, weight-normalized layer of K prototypes"),
        Component("projector", "clrun/identity", f"{HEADS}:IdentityProjector", "no projector: the loss sees the backbone features"),
        # The same MLP is the predictor head of BYOL and SimSiam (online branch only).
        Component(
            "predictor",
            "clrun/mlp",
            f"{HEADS}:mlp_predictor",
            "an MLP predictor head on the online branch: Linear-BN-ReLU layers, optional output batch norm",
        ),
    ]


def __getattr__(name: str) -> Any:
    # The heads lived here before this module only registered them; `from clrun.plugins.projectors import
    # MLPProjector` keeps working, importing clrun.plugins.heads (and torch) on that first access only.
    if name in ("MLPProjector", "IdentityProjector", "mlp_predictor"):
        return getattr(importlib.import_module(HEADS), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
