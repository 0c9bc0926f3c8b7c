"""Offers the layouts of the official checkpoints (``clrun.plugins.weights.official``, a module per family)
and cl-run's own (``clrun.weights.own_layouts``: its checkpoints and encoder exports, timm's model folders, a
plain state dict) by import path, so that listing them imports neither module nor torch."""

from __future__ import annotations

from clrun import Component, hookimpl

OFFICIAL = "clrun.plugins.weights.official"
OWN = "clrun.weights.own_layouts"


@hookimpl
def clrun_components() -> list[Component]:
    return [
        Component("weights_layout", "clrun/dino", f"{OFFICIAL}.dino:DINOLayout",
                  "DINO's main_dino.py checkpoint: teacher and student, backbone and DINO head (Apache-2.0)"),
        Component("weights_layout", "clrun/ibot", f"{OFFICIAL}.dino:IBOTLayout",
                  "iBOT's main_ibot.py checkpoint: teacher and student, backbone and the head's class-token part (Apache-2.0)"),
        Component("weights_layout", "clrun/dinov2", f"{OFFICIAL}.dinov2:DINOv2Layout",
                  "DINOv2's teacher_checkpoint.pth, its full training state dict, or a released hub backbone (Apache-2.0)"),
        Component("weights_layout", "clrun/mae", f"{OFFICIAL}.mae:MAELayout",
                  "MAE's main_pretrain.py checkpoint: encoder and decoder (CC-BY-NC-4.0)"),
        Component("weights_layout", "clrun/ijepa", f"{OFFICIAL}.ijepa:IJEPALayout",
                  "I-JEPA's checkpoint: target encoder, context encoder and predictor (CC-BY-NC-4.0)"),
        Component("weights_layout", "clrun/mocov3", f"{OFFICIAL}.mocov3:MoCoV3Layout",
                  "MoCo v3's main_moco.py checkpoint: base and momentum encoders, projectors, predictor (CC-BY-NC-4.0)"),
        Component("weights_layout", "clrun/checkpoint", f"{OWN}:ClrunCheckpoint",
                  "a cl-run checkpoint or run folder: the online network and the momentum target"),
        Component("weights_layout", "clrun/encoder", f"{OWN}:ClrunEncoder",
                  "a cl-run encoder export (encoder file): the backbone, with its recipe and licence"),
        Component("weights_layout", "timm/local-dir", f"{OWN}:TimmFolder",
                  "a timm model folder (config.json + model.safetensors), as a Hugging Face Hub repository holds it"),
        Component("weights_layout", "clrun/state_dict", f"{OWN}:StateDict",
                  "the last resort: a flat state dict of the backbone (a released encoder), tried after every other layout"),
    ]
