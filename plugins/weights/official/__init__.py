"""Layouts of the official checkpoints of DINO, iBOT, DINOv2, MAE, I-JEPA and MoCo v3 (``weights_layout``
components; ``clrun.plugins.weights.components`` offers them as ``clrun/dino``, ``clrun/ibot``,
``clrun/dinov2``, ``clrun/mae``, ``clrun/ijepa``, ``clrun/mocov3``).

Each layout recognizes its family by the keys of what a file holds, never by the file's name, and the families
exclude each other. The backbone part keeps the names of the official model (a timm-style ViT for all six:
``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.<i>``, ``norm``), without the wrappers' prefixes;
the heads are renamed to cl-run's head modules (``clrun/dino_head``, ``clrun/mlp``, ``clrun/mae_decoder``,
``clrun/jepa_predictor``). A flat released backbone of DINO, iBOT or MAE (``dino_deitsmall16_pretrain.pth``,
iBOT's ``checkpoint_teacher.pth`` = ``{"state_dict": backbone}``, MAE's ``mae_pretrain_vit_base.pth`` =
``{"model": encoder}``) is a plain ViT state dict: none of these layouts claims it (the generic state-dict
layout reads it). DINOv2's released hub backbones are claimed, by their DINOv2-only key set.

Line numbers refer to the repositories at the commits named in tests/fixtures/official_weights/README.md
(facebookresearch/dino 7c446df, bytedance/ibot da316d8, facebookresearch/dinov2 b8931f7,
facebookresearch/mae efb2a80, facebookresearch/ijepa 52c1ae9, facebookresearch/moco-v3 c349e6e). Every
family trained on ImageNet-normalized images (mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)).

One module per family: ``dino`` (DINO and iBOT, one checkpoint format), ``dinov2``, ``mae``, ``ijepa``,
``mocov3``; ``heads`` holds the head renames two families share, ``common`` the rest they share.
"""

from clrun.plugins.weights.official.dino import DINOLayout, IBOTLayout
from clrun.plugins.weights.official.dinov2 import DINOv2Layout
from clrun.plugins.weights.official.heads import dino_head, token_transformer
from clrun.plugins.weights.official.ijepa import IJEPALayout
from clrun.plugins.weights.official.mae import MAELayout
from clrun.plugins.weights.official.mocov3 import MoCoV3Layout, moco_mlp

__all__ = ["DINOLayout", "DINOv2Layout", "IBOTLayout", "IJEPALayout", "MAELayout", "MoCoV3Layout", "dino_head",
           "moco_mlp", "token_transformer"]
