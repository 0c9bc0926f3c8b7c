"""Tokens from timm ViTs (``forward_tokens``) against an explicit reference forward written from the ViT's
definition (Dosovitskiy et al. 2021): patches embedded by the patch projection (a strided convolution),
position embeddings added, hidden patches dropped (MAE: after the position embeddings, so the kept
tokens keep theirs) or replaced by the mask token (iBOT: before them), the class and register tokens
prepended, the blocks run one by one, the final norm. The reference calls the model's blocks and
norm (the parts under test are the embedding and the masking around them), not its ``_pos_embed``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clrun
from clrun import UserError, offers_tokens

SMALL = {"patch_size": 7, "embed_dim": 48, "depth": 2, "num_heads": 3}


def vit(mask_token: bool = False, **model_args):
    torch.manual_seed(0)
    return clrun.create("backbone", "timm/vit_tiny_patch16_224", in_chans=1, img_size=28, mask_token=mask_token,
                        model_args={**SMALL, **model_args}).eval()


def reference(model, images, visible=None, drop=False):
    """(prefix, patches) by the ViT's definition; the prefix tokens are the class token then the registers."""
    proj = model.patch_embed.proj
    x = F.conv2d(images, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)  # (B, L, D)
    batch, count = x.shape[:2]
    if visible is not None and not drop:
        x = torch.where(visible.unsqueeze(-1), x, model.pretext_mask_token)
    prefix = [model.cls_token.expand(batch, -1, -1)]
    if model.reg_token is not None:
        prefix.append(model.reg_token.expand(batch, -1, -1))
    prefix = torch.cat(prefix, dim=1)
    if model.no_embed_class:  # the position embeddings are the patches' only
        x = x + model.pos_embed
    else:  # the class token's position embedding comes first
        x = x + model.pos_embed[:, 1:]
        prefix = prefix + model.pos_embed[:, :1]
    if visible is not None and drop:
        x = torch.stack([x[b][visible[b]] for b in range(batch)])
    x = torch.cat([prefix, x], dim=1)
    for block in model.blocks:
        x = block(x)
    x = model.norm(x)
    return x[:, :prefix.shape[1]], x[:, prefix.shape[1]:]


def images(batch=3, size=28):
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(1))


def masks(name, batch=3, grid=(4, 4), **settings):
    torch.manual_seed(2)
    return clrun.create("mask", name, **settings)(batch, grid)


@pytest.mark.parametrize("model_args", [{}, {"reg_tokens": 4, "no_embed_class": True}], ids=["class token", "registers"])
def test_unmasked_tokens_are_the_vits_own_forward(model_args):
    model = vit(**model_args)
    x = images()
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        prefix, patches = reference(model, x)
        torch.testing.assert_close(tokens.prefix, prefix)
        torch.testing.assert_close(tokens.patches, patches)
        torch.testing.assert_close(tokens.pooled, model(x))
    assert tokens.grid == (4, 4) and tokens.prefix.shape[1] == 1 + model_args.get("reg_tokens", 0)


@pytest.mark.parametrize("model_args", [{}, {"reg_tokens": 4, "no_embed_class": True}], ids=["class token", "registers"])
def test_dropping_hidden_patches_equals_the_reference_on_the_kept_tokens(model_args):
    model = vit(**model_args)
    x, visible = images(), masks("clrun/random_mask").visible
    with torch.no_grad():
        tokens = model.forward_tokens(x, visible, drop=True)
        prefix, patches = reference(model, x, visible, drop=True)
    assert tokens.patches.shape == (3, 4, 48)  # 16 patches, 75% hidden
    torch.testing.assert_close(tokens.prefix, prefix)
    torch.testing.assert_close(tokens.patches, patches)


@pytest.mark.parametrize("name,settings", [("clrun/random_mask", {}), ("clrun/multiblock_mask", {"min_keep": 2})])
def test_dropping_by_the_masks_index_equals_the_reference_without_a_host_sync(name, settings):
    """The training step passes the kept patches' index (``Masks.visible_index``): no count check, no
    ``nonzero``, nothing the host waits for."""
    from clrun.host_syncs import HostSyncCounter

    device = torch.device("cpu")  # named: the counter takes what is made on it for device data
    model = vit(reg_tokens=2, no_embed_class=True)
    torch.manual_seed(2)
    drawn = clrun.create("mask", name, **settings)(3, (4, 4), device)
    x = images().to(device)
    with torch.no_grad(), HostSyncCounter() as counter:
        counter.counting = True
        tokens = model.forward_tokens(x, drawn.visible, drop=True, visible_index=drawn.visible_index)
        counter.counting = False
        prefix, patches = reference(model, x, drawn.visible, drop=True)
    assert dict(counter.counts) == {}
    assert tokens.patches.shape == (3, drawn.visible_count, 48)
    torch.testing.assert_close(tokens.prefix, prefix)
    torch.testing.assert_close(tokens.patches, patches)


def test_replacing_hidden_patches_by_the_mask_token_equals_the_reference():
    model = vit(mask_token=True)
    with torch.no_grad():
        model.pretext_mask_token.normal_()  # zeros at initialization: a nonzero token tests where it goes
    x, visible = images(), masks("clrun/block_mask", probability=1.0, ratio=[0.4, 0.5]).visible
    assert (~visible).any()
    with torch.no_grad():
        tokens = model.forward_tokens(x, visible)
        prefix, patches = reference(model, x, visible)
    torch.testing.assert_close(tokens.prefix, prefix)
    torch.testing.assert_close(tokens.patches, patches)
    assert tokens.patches.shape == (3, 16, 48)


def test_the_mask_token_is_learned_and_starts_at_zero():
    model = vit(mask_token=True).train()
    assert "pretext_mask_token" in dict(model.named_parameters()) and not model.pretext_mask_token.any()
    visible = masks("clrun/block_mask", probability=1.0).visible
    model.forward_tokens(images(), visible).patches.square().mean().backward()
    assert model.pretext_mask_token.grad is not None and model.pretext_mask_token.grad.abs().sum() > 0


def test_a_dynamic_size_vit_gives_the_grid_of_each_crop_size():
    model = vit(dynamic_img_size=True)
    x = images(size=14)
    visible = masks("clrun/random_mask", grid=(2, 2), ratio=0.5).visible
    with torch.no_grad():
        tokens = model.forward_tokens(x, visible, drop=True)
    assert tokens.grid == (2, 2) and tokens.patches.shape == (3, 2, 48)


def test_cnns_have_no_tokens_and_refuse_a_mask_token():
    resnet = clrun.create("backbone", "timm/resnet10t", in_chans=1)
    assert not offers_tokens(resnet) and offers_tokens(vit())
    with pytest.raises(UserError) as info:
        clrun.create("backbone", "timm/resnet10t", in_chans=1, mask_token=True)
    assert str(info.value).endswith(
        "timm/resnet10t: mask_token needs a vision transformer (patch tokens); this model has none. "
        "Pick a timm ViT, e.g. timm/vit_small_patch16_224")


def test_bad_masks_are_refused():
    model = vit()
    with pytest.raises(ValueError, match=r"^forward_tokens: visible must be \(3, 16\) for a 4 x 4 patch grid, got \(3, 9\)$"):
        model.forward_tokens(images(), torch.ones(3, 9, dtype=torch.bool))
    uneven = torch.ones(3, 16, dtype=torch.bool)
    uneven[0, :3] = False
    with pytest.raises(ValueError, match=r"same visible count in every image; got \[13, 16\]"):
        model.forward_tokens(images(), uneven, drop=True)
    with pytest.raises(ValueError, match=r"needs the backbone's mask token \(backbone option mask_token: true\)"):
        model.forward_tokens(images(), uneven)
    with pytest.raises(ValueError, match=r"^forward_tokens: visible_index must be \(3, K\), got \(2, 4\)$"):
        model.forward_tokens(images(), uneven, drop=True, visible_index=torch.zeros(2, 4, dtype=torch.long))


def test_the_class_tokens_attention_is_the_last_blocks_own():
    """The weights, applied to the block's values, give the class token's row of timm's fused attention."""
    model = vit(reg_tokens=2, no_embed_class=True)
    x = images()
    with torch.no_grad():
        weights = model.prefix_attention(x)  # (B, heads, patches)
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        tokens = model.blocks[:-1](tokens)
        last = model.blocks[-1]
        h = last.norm1(tokens)
        qkv = last.attn.qkv(h).reshape(3, 19, 3, 3, 16).permute(2, 0, 3, 1, 4)
        fused = F.scaled_dot_product_attention(*qkv.unbind(0))[:, :, 0]  # the class token's output, per head
        full = torch.softmax((qkv[0][:, :, :1] * last.attn.scale) @ qkv[1].transpose(-2, -1), dim=-1)[:, :, 0]
    assert weights.shape == (3, 3, 16)
    torch.testing.assert_close(weights, full[:, :, 3:])  # the patches' columns, after the class and 2 registers
    torch.testing.assert_close((full.unsqueeze(-2) @ qkv[2]).squeeze(-2), fused)
    assert (weights.sum(dim=-1) <= 1 + 1e-6).all()
