"""The ``token_head`` components cl-run ships with, offered by import path (listing them does not import torch)."""

from __future__ import annotations

from clrun import Component, hookimpl

HEADS = "clrun.plugins.token_heads"


@hookimpl
def clrun_components() -> list[Component]:
    return [
        Component("token_head", "clrun/mae_decoder", f"{HEADS}:MAEDecoder",
                  "MAE's decoder: visible tokens plus mask tokens, sin-cos positions, blocks, pixels per patch"),
        Component("token_head", "clrun/jepa_predictor", f"{HEADS}:JEPAPredictor",
                  "I-JEPA's predictor: context tokens plus positioned mask tokens per target block"),
    ]
