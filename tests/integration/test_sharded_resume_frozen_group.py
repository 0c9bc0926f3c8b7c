"""A sharded run (train.strategy: fsdp) resumes after an epoch in which a parameter group was frozen, as
DINO and iBOT freeze their prototypes for the first epoch: the checkpoint holds no optimizer state for
those parameters (they took no step), and the resumed run must end with the weights of an uninterrupted
one. It stopped with "Missing key in checkpoint state_dict: optimizer.state.network.projector.last_layer..."
before; one process is enough to show it (the same checkpoint loads on any number of processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clrun

RECIPE = """
seed: 0
data:
  dataset: {name: clrun/synthetic, num_images: 32, size: 16}
  batch_size: 8
  num_workers: 0
views:
  - name: global
    count: 2
    transforms:
      - {name: kornia/RandomResizedCrop, size: [16, 16], scale: [0.3, 1.0]}
backbone:
  name: timm/vit_tiny_patch16_224
  img_size: 16
  model_args: {patch_size: 4, embed_dim: 16, depth: 1, num_heads: 2}
projector: {name: clrun/dino_head, out_dim: 32, hidden_dim: 16, bottleneck_dim: 8}
target: {momentum: 0.996}
loss: {name: clrun/dino}
optimizer: {name: torch/AdamW, lr: 5.0e-4}
params:
  groups:
    - match: [projector.last_layer.*]
      frozen_epochs: 1
train: {epochs: 2, device: cpu, progress: false, threads: 1, strategy: fsdp, channels_last: false}
health: {enabled: false}
"""


def load(tmp_path: Path, name: str) -> clrun.Recipe:
    path = tmp_path / "dino_sharded.yaml"
    path.write_text(RECIPE, encoding="utf-8")
    return clrun.load_recipe(path, [f"run.dir={tmp_path / 'runs'}", f"run.name={name}"])


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


@pytest.mark.usefixtures("no_report")
def test_a_sharded_run_resumes_after_its_frozen_epoch_as_if_uninterrupted(tmp_path, crash_after_first_checkpoint):
    straight = clrun.train(load(tmp_path, "straight"))
    folder = crash_after_first_checkpoint(load(tmp_path, "resumed"))  # after epoch 1, prototypes still frozen
    resumed = clrun.train(load(tmp_path, "resumed"), resume=folder)
    assert (resumed.epoch, resumed.step) == (straight.epoch, straight.step) == (2, 8)
    expected, got = straight.parts.network.state_dict(), resumed.parts.network.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(whole(expected[key]), whole(got[key])), key
