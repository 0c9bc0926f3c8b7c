"""MoCo v3's checkpoints (``clrun/mocov3``): base and momentum encoders with their projectors, and the
predictor; its bias-free MLPs in ``clrun/mlp``'s names."""

from __future__ import annotations

from typing import Optional

import torch

from clrun.plugins.weights.official.common import (State, as_state, check_network, has_prefix, under, unwrapped,
                                                   vit_trained)
from clrun.weights.layout import Trained, WeightsFile


def moco_mlp(state: State) -> State:
    """A MoCo v3 MLP (moco/builder.py:36-53, ``_build_mlp``: bias-free ``Linear`` layers, each but the last
    followed by ``BatchNorm1d`` and ``ReLU``, the last by ``BatchNorm1d(affine=False)`` where ``last_bn``) in
    ``clrun/mlp``'s names (``MLPProjector``, whose layers sit at the same indices of its ``net`` with
    ``batch_norm``, and with ``last_batch_norm`` where the official MLP ends in BatchNorm). cl-run's ``Linear``
    layers have biases except the last before an output BatchNorm; MoCo v3's none: those biases are given as
    zeros, which computes exactly what the bias-free layer does."""
    out: State = {f"net.{name}": value for name, value in state.items()}
    linear = sorted(int(name.split(".")[0]) for name, value in state.items()
                    if name.endswith(".weight") and value.ndim == 2)
    for index in linear:
        if f"{index}.bias" in state:
            continue
        if index == linear[-1] and f"{index + 1}.running_mean" in state:
            continue  # cl-run's last Linear before last_batch_norm has no bias either
        weight = state[f"{index}.weight"]
        out[f"net.{index}.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return out


class MoCoV3Layout:
    """MoCo v3's checkpoints (Chen, Xie and He 2021; facebookresearch/moco-v3, CC-BY-NC-4.0):
    ``checkpoint_<epoch>.pth.tar`` and the released ``vit-b-300ep.pth.tar`` etc., main_moco.py:310-316:
    ``{"epoch", "arch", "state_dict", "optimizer", "scaler"}`` with ``state_dict`` the DDP-wrapped ``MoCo``
    (moco/builder.py:11-34): ``module.base_encoder.``, ``module.momentum_encoder.``, ``module.predictor.``.
    Recognized by the base and momentum encoders.

    Networks: ``student``, the base encoder (the one the paper evaluates: main_lincls.py:180-183 and
    convert_to_deit.py keep ``base_encoder``), then ``teacher``, the momentum encoder. Parts: ``backbone``,
    the encoder without its projector (a ``VisionTransformerMoCo``, vits.py:25-69, timm's ViT with fixed
    sin-cos ``pos_embed``; or a torchvision ResNet); ``projector``, the encoder's ``head`` (ViTs: a 3-layer
    MLP, builder.py:112-119) or ``fc`` (ResNets: 2 layers, builder.py:99-106); for the student also
    ``predictor`` (2 layers, builder.py:109, 122). Both in ``clrun/mlp``'s names (see ``moco_mlp``): the
    projector is ``MLPProjector(num_layers=3 (ViT) / 2 (ResNet), batch_norm=True, last_batch_norm=True)``,
    the ViTs' predictor ``mlp_predictor(num_layers=2, last_batch_norm=True)``, the ResNets' without
    ``last_batch_norm``.

    Trained: patch size from the patch embedding (ViTs), image size from the position embeddings, else the
    crops' 224 px (main_moco.py:263), ImageNet mean and std (main_moco.py:258-259), no registers, CC-BY-NC-4.0.
    """

    licence = "CC-BY-NC-4.0"
    _ENCODERS = {"student": "base_encoder.", "teacher": "momentum_encoder."}

    @staticmethod
    def _state_dict(file: WeightsFile) -> Optional[State]:
        state = as_state(file.content.get("state_dict"))
        return unwrapped(state) if state is not None else None

    def recognizes(self, file: WeightsFile) -> bool:
        state = self._state_dict(file)
        return has_prefix(state, "base_encoder.") and has_prefix(state, "momentum_encoder.")

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("student", "teacher")

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        check_network(file, network, self.networks(file))
        state = self._state_dict(file)
        encoder = under(state, self._ENCODERS[network])
        head = "head." if has_prefix(encoder, "head.") else "fc."
        parts = {"backbone": {name: value for name, value in encoder.items() if not name.startswith(head)},
                 "projector": moco_mlp(under(encoder, head))}
        if network == "student":
            parts["predictor"] = moco_mlp(under(state, "predictor."))
        return {part: tensors for part, tensors in parts.items() if tensors}

    def trained(self, file: WeightsFile) -> Trained:
        trained = vit_trained(self.parts(file, "student")["backbone"], self.licence)
        if trained.image_size is None:  # a ResNet: the script's crops
            trained.image_size = 224
        return trained
