"""The token heads (clrun/mae_decoder, clrun/jepa_predictor) against explicit reference forwards that place
each token by hand, one image and one target block at a time; their sin-cos position embeddings against a
NumPy port of MAE's ``get_2d_sincos_pos_embed``; and what each prediction may depend on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clrun
from clrun import ComponentError, Masks, Tokens
from clrun import sincos_position_embeddings

torch.manual_seed(0)


def mae_sincos_numpy(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's util/pos_embed.py (get_2d_sincos_pos_embed, cls_token=False), ported line by line."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def test_sincos_position_embeddings_are_maes():
    for dim, size in ((16, 4), (32, 7)):
        np.testing.assert_allclose(sincos_position_embeddings((size, size), dim).numpy(), mae_sincos_numpy(dim, size),
                                   rtol=1e-6, atol=1e-6)
    rectangular = sincos_position_embeddings((2, 3), 8)
    # Patch (row 1, column 2): the first half encodes its column, the second its row.
    np.testing.assert_allclose(rectangular[5, :4].numpy(), sincos_position_embeddings((3, 3), 8)[2, :4].numpy())
    np.testing.assert_allclose(rectangular[5, 4:].numpy(), sincos_position_embeddings((3, 3), 8)[3, 4:].numpy())


def masks_with(visible: torch.Tensor, targets: torch.Tensor) -> Masks:
    return Masks(visible, targets)


def drop_masks(batch: int, length: int, keep: int) -> Masks:
    order = torch.rand(batch, length).argsort(dim=1)
    visible = torch.zeros(batch, length, dtype=torch.bool).scatter_(1, order[:, :keep], True)
    return Masks(visible, (~visible).unsqueeze(1))


def run_blocks(head, x):
    for block in head.blocks:
        x = block(x)
    return head.norm(x)


def mae_reference(head, prefix, patches, grid, masks, b):
    """Image ``b`` through MAE's decoder, token by token: embed; each patch position gets its own visible
    token (the next one in raster order when hidden ones were dropped) or the mask token; positions."""
    length = grid[0] * grid[1]
    pos = sincos_position_embeddings(grid, head.mask_token.shape[0])
    embedded = head.embed(patches[b])
    sequence, next_visible = [], 0
    for index in range(length):
        if masks.visible[b, index]:
            token = embedded[index] if patches.shape[1] == length else embedded[next_visible]
            next_visible += 1
        else:
            token = head.mask_token
        sequence.append(token + pos[index])
    x = torch.cat([head.embed(prefix[b]), torch.stack(sequence)])
    out = head.out(run_blocks(head, x[None]))[0, prefix.shape[1]:]
    return out[masks.targets[b, 0]]


@pytest.mark.parametrize("dropped", [True, False])
def test_mae_decoder_equals_a_token_by_token_reference(dropped):
    grid, batch, width = (3, 4), 3, 24
    head = clrun.create("token_head", "clrun/mae_decoder", token_dim=width, patch_pixels=12, embed_dim=16, depth=2,
                        num_heads=2).eval()
    masks = drop_masks(batch, 12, keep=5)
    patches = torch.randn(batch, 5 if dropped else 12, width)
    prefix = torch.randn(batch, 2, width)  # a class and a register token
    out = head(Tokens(prefix, patches, grid, torch.zeros(batch, width)), masks)
    assert out.shape == (batch, 1, 7, 12)
    for b in range(batch):
        torch.testing.assert_close(out[b, 0], mae_reference(head, prefix, patches, grid, masks, b), rtol=1e-5, atol=1e-5)


def test_mae_decoder_ignores_what_hides_behind_the_mask_token():
    head = clrun.create("token_head", "clrun/mae_decoder", token_dim=8, patch_pixels=4, embed_dim=8, depth=1,
                        num_heads=2).eval()
    masks = drop_masks(2, 9, keep=3)
    patches = torch.randn(2, 9, 8)
    changed = torch.where(masks.visible.unsqueeze(-1), patches, torch.randn(2, 9, 8))
    tokens = [Tokens(torch.zeros(2, 0, 8), p, (3, 3), torch.zeros(2, 8)) for p in (patches, changed)]
    torch.testing.assert_close(head(tokens[0], masks), head(tokens[1], masks))


def jepa_reference(head, patches, grid, masks, b, m):
    """Image ``b``'s target block ``m`` through I-JEPA's predictor, token by token: the context tokens with
    their positions, then one mask token per target patch with its position; the last ones, projected."""
    pos = sincos_position_embeddings(grid, head.mask_token.shape[0])
    positions = masks.visible[b].nonzero()[:, 0]
    context = head.embed(patches[b]) + pos[positions]
    queries = torch.stack([head.mask_token + pos[i] for i in masks.targets[b, m].nonzero()[:, 0]])
    x = run_blocks(head, torch.cat([context, queries])[None])[0]
    return head.out(x[-len(queries):])


def test_jepa_predictor_equals_a_token_by_token_reference_per_target_block():
    grid, batch, width = (4, 4), 2, 12
    head = clrun.create("token_head", "clrun/jepa_predictor", token_dim=width, embed_dim=8, depth=2, num_heads=2).eval()
    generator = clrun.create("mask", "clrun/multiblock_mask", min_keep=2)
    masks = generator(batch, grid, "cpu")
    count = int(masks.visible[0].sum())
    patches = torch.randn(batch, count, width)
    out = head(Tokens(torch.zeros(batch, 0, width), patches, grid, torch.zeros(batch, width)), masks)
    assert out.shape == (batch, 4, int(masks.targets[0, 0].sum()), width)
    for b in range(batch):
        for m in range(4):
            torch.testing.assert_close(out[b, m], jepa_reference(head, patches, grid, masks, b, m), rtol=1e-5, atol=1e-5)


def test_a_jepa_prediction_does_not_see_the_other_target_blocks():
    grid = (4, 4)
    head = clrun.create("token_head", "clrun/jepa_predictor", token_dim=6, embed_dim=8, depth=1, num_heads=2).eval()
    visible = torch.zeros(1, 16, dtype=torch.bool)
    visible[0, :8] = True
    first = torch.zeros(1, 2, 16, dtype=torch.bool)
    first[0, 0, [8, 9]] = True
    first[0, 1, [10, 11]] = True
    second = first.clone()
    second[0, 1] = False
    second[0, 1, [14, 15]] = True
    tokens = Tokens(torch.zeros(1, 0, 6), torch.randn(1, 8, 6), grid, torch.zeros(1, 6))
    a, b = head(tokens, Masks(visible, first)), head(tokens, Masks(visible, second))
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1], b[:, 1])


def test_token_heads_train_end_to_end_through_a_timm_vit():
    """Gradients reach the ViT's visible-patch path and every head parameter."""
    vit = clrun.create("backbone", "timm/vit_tiny_patch16_224", in_chans=1, img_size=16,
                       model_args={"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2})
    for name, settings in (("clrun/mae_decoder", {"patch_pixels": 16, "embed_dim": 8, "depth": 1, "num_heads": 2}),
                           ("clrun/jepa_predictor", {"embed_dim": 8, "depth": 1, "num_heads": 2})):
        head = clrun.create("token_head", name, token_dim=16, **settings)
        masks = drop_masks(2, 16, keep=4)
        out = head(vit.forward_tokens(torch.randn(2, 1, 16, 16), masks.visible, drop=True), masks)
        out.square().mean().backward()
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in head.parameters()), name
        assert vit.patch_embed.proj.weight.grad.abs().sum() > 0


def test_token_heads_refuse_bad_sizes_naming_the_setting():
    with pytest.raises(ComponentError, match=r"^clrun/mae_decoder: embed_dim \(10\) must be divisible by num_heads \(4\)$") as info:
        clrun.create("token_head", "clrun/mae_decoder", token_dim=8, patch_pixels=4, embed_dim=10, num_heads=4)
    assert info.value.argument == "embed_dim"
    with pytest.raises(ComponentError, match=r"'clrun/jepa_predictor'\): depth: must be an integer >= 1 \(I-JEPA uses 12\), "
                                             r"got 0"):
        clrun.create("token_head", "clrun/jepa_predictor", token_dim=8, depth=0)
    with pytest.raises(ComponentError, match=r"embed_dim must be divisible by 4 \(sin-cos position embeddings over rows "
                                             r"and columns\), got 6"):
        clrun.create("token_head", "clrun/mae_decoder", token_dim=8, patch_pixels=4, embed_dim=6, num_heads=2)


def test_position_tables_are_made_once_per_grid_and_kept_on_the_device():
    """Rebuilt on the host and uploaded at every step, the table would be a blocking copy per step."""
    from clrun.plugins.heads.token_heads import position_embeddings

    like = torch.zeros(2, 5, 16)
    first, again = position_embeddings((3, 4), like), position_embeddings((3, 4), like)
    assert first.data_ptr() == again.data_ptr()
    torch.testing.assert_close(first, sincos_position_embeddings((3, 4), 16), rtol=0, atol=0)
    assert position_embeddings((3, 4), like.double()).dtype == torch.float64
    assert position_embeddings((2, 2), like).shape == (4, 16)


def test_a_table_first_made_under_inference_mode_still_trains():
    from clrun.plugins.heads.token_heads import position_embeddings

    with torch.inference_mode():
        position_embeddings((5, 3), torch.zeros(1, 8))
    head = clrun.create("token_head", "clrun/mae_decoder", token_dim=6, patch_pixels=4, embed_dim=8, depth=1, num_heads=2)
    masks = drop_masks(2, 15, keep=5)
    head(Tokens(torch.zeros(2, 0, 6), torch.randn(2, 5, 6), (5, 3), torch.zeros(2, 6)), masks).sum().backward()
    assert head.mask_token.grad is not None


@pytest.mark.parametrize("name,settings,generator,generator_settings", [
    ("clrun/mae_decoder", {"patch_pixels": 4}, "clrun/random_mask", {}),
    ("clrun/jepa_predictor", {}, "clrun/multiblock_mask", {"min_keep": 2}),
])
def test_the_heads_make_no_host_sync_with_masks_that_know_their_counts(name, settings, generator, generator_settings):
    """Dropped tokens scattered back (MAE) or their positions gathered (I-JEPA), and the targets picked, by
    the index the masks know: nothing is read back from the device (the first call makes the table)."""
    from clrun.host_syncs import HostSyncCounter

    device = torch.device("cpu")  # named: the counter takes what is made on it for device data
    head = clrun.create("token_head", name, token_dim=6, embed_dim=8, depth=1, num_heads=2, **settings)
    masks = clrun.create("mask", generator, **generator_settings)(3, (4, 4), device)
    tokens = Tokens(torch.zeros(3, 1, 6, device=device), torch.randn(3, masks.visible_count, 6, device=device), (4, 4),
                    torch.zeros(3, 6, device=device))
    expected = head(tokens, Masks(masks.visible, masks.targets))  # counts read from the masks: the same result
    with HostSyncCounter() as counter:
        counter.counting = True
        out = head(tokens, masks)
    assert dict(counter.counts) == {}
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
