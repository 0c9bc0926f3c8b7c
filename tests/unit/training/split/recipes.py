"""Small recipes on a tiny ViT (LayerNorm only) for the tests of a batch in parts: one per loss family."""

from __future__ import annotations

from pathlib import Path

import clrun

VIT = """
seed: 0
data:
  dataset: {{name: clrun/synthetic, num_images: 256, size: 16, channels: 1}}
  batch_size: 256
  num_workers: 0
views:
  - name: global
    count: 2
    transforms:
{global_transforms}
{local}
backbone:
  name: timm/vit_tiny_patch16_224
  in_chans: 1
  img_size: 16
  model_args: {{patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2, dynamic_img_size: true}}
{mask_token}
{backbone_args}
{heads}
loss:
{loss}
optimizer: {{name: torch/SGD, lr: 0.1}}
train: {{epochs: 1, device: cpu, progress: false, threads: 1{train}}}
run: {{dir: runs}}
"""

RANDOM_CROPS = """      - {name: kornia/RandomResizedCrop, size: [16, 16], scale: [0.3, 1.0]}
      - {name: kornia/RandomHorizontalFlip}"""
# Views that draw nothing: a batch in micro-batches sees the views the whole batch would.
SAME_VIEWS = "      - {name: kornia/CenterCrop, size: [16, 16]}"

LOCAL = """  - name: local
    count: 2
    local: true
    transforms:
      - {name: kornia/RandomResizedCrop, size: [8, 8], scale: [0.1, 0.3]}"""

MLP = "projector: {name: clrun/mlp, hidden_dim: 48, out_dim: 24, batch_norm: false}"
DINO_HEAD = "projector: {name: clrun/dino_head, out_dim: 64, hidden_dim: 48, bottleneck_dim: 16, batch_norm: false}"
TARGET = "target: {momentum: 0.99}"

# name -> (loss section, heads and sections, multi-crop)
LOSSES = {
    "clrun/ntxent": ("  name: clrun/ntxent\n  temperature: 0.2", MLP, False),
    "clrun/barlow_twins": ("  name: clrun/barlow_twins\n  lambd: 0.01", MLP, False),
    "clrun/vicreg": ("  name: clrun/vicreg", MLP, False),
    "clrun/dino": ("  name: clrun/dino\n  teacher_temperature: 0.05\n  center_momentum: 0.8", f"{DINO_HEAD}\n{TARGET}", True),
    "clrun/ibot": ("  name: clrun/ibot\n  teacher_temperature: 0.05\n  teacher_patch_temperature: 0.05",
                   f"{DINO_HEAD}\n{TARGET}\nmasking: {{generator: {{name: clrun/block_mask}}, hidden: mask_token}}", True),
    "clrun/byol": ("  name: clrun/byol",
                   f"{MLP}\n{TARGET}\npredictor: {{name: clrun/mlp, hidden_dim: 48, batch_norm: false}}", False),
}


def vit_recipe(tmp_path: Path, loss: str, train: str = "", backbone_args: str = "",
               transforms: str = RANDOM_CROPS) -> clrun.Recipe:
    """The tiny-ViT recipe training ``loss`` (a ``LOSSES`` name), with ``train`` settings (``", key: value"``)
    and ``backbone_args`` (lines of the backbone section); ``transforms``: the global views'."""
    section, heads, multi_crop = LOSSES[loss]
    text = VIT.format(global_transforms=transforms, local=LOCAL if multi_crop else "", heads=heads, loss=section, train=train,
                      mask_token="  mask_token: true" if "masking" in heads else "", backbone_args=backbone_args)
    path = tmp_path / f"{loss.split('/')[1]}.yaml"
    path.write_text(text)
    return clrun.load_recipe(path)
