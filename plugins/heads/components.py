"""Offers the built-in heads by import path (listing them does not import torch): the projectors and
predictor (``mlp``, ``dino_head``) and the token heads of masked modelling (``token_heads``)."""

from __future__ import annotations

from clrun import Component, hookimpl

MLP = "clrun.plugins.heads.mlp"
TOKEN_HEADS = "clrun.plugins.heads.token_heads"


@hookimpl
def clrun_components() -> list[Component]:
    return [
        Component(
            "projector",
            "clrun/mlp",
            f"{MLP}:MLPProjector",
            "SimCLR's MLP projection head g(.): Linear-BN-ReLU layers, optional output batch norm",
        ),
        Component("projector", "clrun/dino_head", "clrun.plugins.heads.dino_head:DINOHead",
                  "DINO's head: MLP to a bottleneck, l2-normalized, weight-normalized layer of K prototypes"),
        Component("projector", "clrun/identity", f"{MLP}:IdentityProjector", "no projector: the loss sees the backbone features"),
        # The same MLP is the predictor head of BYOL and SimSiam (online branch only).
        Component(
            "predictor",
            "clrun/mlp",
            f"{MLP}:mlp_predictor",
            "an MLP predictor head on the online branch: Linear-BN-ReLU layers, optional output batch norm",
        ),
        Component("token_head", "clrun/mae_decoder", f"{TOKEN_HEADS}:MAEDecoder",
                  "MAE's decoder: visible tokens plus mask tokens, sin-cos positions, blocks, pixels per patch"),
        Component("token_head", "clrun/jepa_predictor", f"{TOKEN_HEADS}:JEPAPredictor",
                  "I-JEPA's predictor: context tokens plus positioned mask tokens per target block"),
    ]
