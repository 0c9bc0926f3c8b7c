"""train.compile by regions: the blocks of a network are found whatever the architecture, compiled in place
(state_dict keys unchanged), and the compiled network computes what the plain one does."""

from __future__ import annotations

import timm
import torch
from torch import nn

from clrun.training.parallel.compiling import compile_regions, repeated_units


def test_the_blocks_are_a_vits_blocks_and_a_resnets_residual_blocks():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8)
    assert repeated_units(vit) == list(vit.blocks)
    resnet = timm.create_model("resnet10t")  # one block per stage: still a stage of blocks
    assert repeated_units(resnet) == [resnet.layer1[0], resnet.layer2[0], resnet.layer3[0], resnet.layer4[0]]
    head = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    assert repeated_units(head) == []  # a layer list, not blocks: compiled whole


def test_compiled_regions_compute_the_same_and_keep_their_keys():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    plain, keys = vit(x), list(vit.state_dict())
    assert compile_regions(vit, backend="eager") == len(vit.blocks)
    # Any path through the blocks runs them compiled, forward_features included (a token method's path).
    assert all(getattr(block, "_compiled_call_impl", None) is not None for block in vit.blocks)
    torch.testing.assert_close(vit(x), plain)
    assert list(vit.state_dict()) == keys
    head = nn.Sequential(nn.Linear(8, 4))
    assert compile_regions(head, backend="eager") == 1 and head._compiled_call_impl is not None
