"""DINOv2's weights (``clrun/dinov2``): its evaluation's teacher checkpoint, its full training state dict and
its released hub backbones."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional

from clrun.plugins.weights.official.common import State, as_state, check_network, has_prefix, under, vit_trained
from clrun.plugins.weights.official.heads import dino_head
from clrun.weights.layout import Trained, WeightsFile

_DINOV2_BACKBONE = re.compile(
    r"^(cls_token|pos_embed|mask_token|register_tokens|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)"
    r"|blocks\.\d+\.(\d+\.)?(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|mlp\.w12|mlp\.w3)\.(weight|bias)"
    r"|blocks\.\d+\.(\d+\.)?ls[12]\.gamma)$")


def _is_dinov2_backbone(state: Optional[State]) -> bool:
    """Whether ``state`` is exactly a ``DinoVisionTransformer``'s (dinov2/models/vision_transformer.py:44-170):
    its ``mask_token`` is ``(1, D)`` (BEiT's and SimMIM's are ``(1, 1, D)``, MAE's belongs to a decoder, iBOT's
    is ``masked_embed``), and it has nothing else than its own names (DINOv3's storage tokens and RoPE, a
    classifier, timm's ``reg_token`` are not)."""
    if not state or "mask_token" not in state or state["mask_token"].ndim != 2:
        return False
    return ({"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(state)
            and all(_DINOV2_BACKBONE.match(name) for name in state))


def _unchunked(backbone: State) -> State:
    """Training configs chunk the blocks for FSDP (``block_chunks``, vision_transformer.py:154-161): block
    ``i`` of chunk ``c`` is ``blocks.c.i.`` (the chunk is padded with ``Identity`` to keep ``i`` global), here
    ``blocks.i.``."""
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", name): value for name, value in backbone.items()}


class DINOv2Layout:
    """DINOv2's weights (Oquab et al. 2023; facebookresearch/dinov2, code and weights Apache-2.0 since
    2023-08-31, commit 81b2b64), in three forms, each an ``SSLMetaArch``'s (dinov2/train/ssl_meta_arch.py:
    31-116): ``student`` and ``teacher`` ``ModuleDict``s of ``backbone`` (a ``DinoVisionTransformer``),
    ``dino_head`` and, with ``ibot.separate_head``, ``ibot_head`` (both ``DINOHead``s):

    * the evaluation's ``eval/<iteration>/teacher_checkpoint`` file, dinov2/train/train.py:122-131:
      ``{"teacher": model.teacher.state_dict()}`` (``backbone.*``, ``dino_head.*``, ``ibot_head.*``);
      networks ``("teacher",)``;
    * the training checkpoint's dict, fvcore's (dinov2/fsdp/__init__.py:86-111): ``{"model", "optimizer",
      "iteration"}`` with ``model`` in the full form (``student.*``, ``teacher.*``, ``dino_loss.center``,
      ``ibot_patch_loss.center``); networks ``("teacher", "student")``. The files training writes,
      ``model_<iteration>.rank_<r>.pth``, hold FSDP's ``LOCAL_STATE_DICT``: each rank's shard of flattened
      parameters (``ShardedTensor``s), which no key map reads: consolidate them to this full form first;
    * a released hub backbone (``dinov2_vits14_pretrain.pth``, ``..._reg4_pretrain.pth``; dinov2/hub/
      backbones.py:17-59): the ``DinoVisionTransformer``'s flat state dict, with ``mask_token`` ``(1, D)`` and,
      for the ``_reg`` models, ``register_tokens``; recognized only by exactly that key set
      (``_is_dinov2_backbone``); network ``("model",)``.

    Parts: ``backbone``, the ``DinoVisionTransformer``'s names (timm's but ``mask_token`` and
    ``register_tokens``, which timm's checkpoint filter converts, and SwiGLU's ``mlp.w12``/``mlp.w3`` of the
    giant models), with training's block chunks ``blocks.<c>.<i>.`` flattened to ``blocks.<i>.``;
    ``projector``: ``dino_head`` in ``clrun/dino_head``'s names. Left out: ``ibot_head`` (cl-run's iBOT
    shares one head for class and patch tokens; DINOv2's default config shares it too, ``separate_head``
    false), the losses' centers.

    Trained: patch size from the patch embedding, image size from the position embeddings (the global crops'
    size the model was built for, models/__init__.py:14-43: 224 in training configs, 518 for the released
    backbones), register tokens from ``register_tokens``, ImageNet mean and std (dinov2/data/transforms.py:
    42-43), Apache-2.0.
    """

    licence = "Apache-2.0"

    @staticmethod
    def _form(content: Mapping[str, Any]) -> Optional[str]:
        model = as_state(content.get("model"))
        if has_prefix(model, "teacher.backbone.") or has_prefix(model, "student.backbone."):
            return "train"
        teacher = as_state(content.get("teacher"))
        if has_prefix(teacher, "backbone.") and (has_prefix(teacher, "dino_head.") or has_prefix(teacher, "ibot_head.")
                                           or "backbone.mask_token" in teacher):
            return "eval"
        if _is_dinov2_backbone(as_state(content)):
            return "hub"
        return None

    def recognizes(self, file: WeightsFile) -> bool:
        return self._form(file.content) is not None

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        form = self._form(file.content)
        if form == "train":
            model = as_state(file.content["model"])
            return tuple(n for n in ("teacher", "student") if has_prefix(model, f"{n}.backbone."))
        return ("teacher",) if form == "eval" else ("model",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        check_network(file, network, self.networks(file))
        form = self._form(file.content)
        if form == "hub":
            return {"backbone": _unchunked(dict(file.content))}
        state = under(file.content["model"], f"{network}.") if form == "train" else as_state(file.content["teacher"])
        parts = {"backbone": _unchunked(under(state, "backbone.")),
                 "projector": dino_head(under(state, "dino_head."))}
        return {part: tensors for part, tensors in parts.items() if tensors}

    def trained(self, file: WeightsFile) -> Trained:
        network = self.networks(file)[0]
        return vit_trained(self.parts(file, network)["backbone"], self.licence)
