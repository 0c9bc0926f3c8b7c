"""clrun/mae and clrun/ijepa against independent float64 NumPy implementations of the papers' losses.

MAE (He et al. 2022; the official ``forward_loss``): each image is cut into p x p patches, each patch
flattened row by row with the channels last (``patchify``: 'nchpwq->nhwpqc'); with ``norm_pix_loss`` each
patch is standardized by its mean and unbiased variance plus 1e-6; the loss is
``((pred - target)^2).mean(-1)`` summed over the hidden patches and divided by their count.

I-JEPA (Assran et al. 2023; the official ``train.py``): ``h = layer_norm(target encoder tokens)`` without
affine parameters (eps 1e-5), the tokens of each target block gathered, ``smooth_l1_loss(z, h)`` averaged
over blocks, patches and dimensions (beta 1).

The references loop over pixels and patches with explicit index arithmetic; gradients are central finite
differences.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import clrun
from clrun import ComponentError, Masks, Tokens
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
numpy_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numpy_reference)

RNG = np.random.default_rng(0)


def numpy_patch(image: np.ndarray, row: int, column: int, p: int) -> np.ndarray:
    """One patch's values in MAE's order: pixel rows, then pixel columns, then channels."""
    channels = image.shape[0]
    return np.array([image[c, row * p + i, column * p + j] for i in range(p) for j in range(p) for c in range(channels)])


def numpy_mae(images: np.ndarray, predictions: np.ndarray, hidden: np.ndarray, p: int, normalize: bool) -> float:
    """``images`` (B, C, H, W); ``predictions`` (B, T, P) for the hidden patches in raster order; ``hidden``
    (B, L) 0/1."""
    columns = images.shape[3] // p
    total, count = 0.0, 0
    for b in range(images.shape[0]):
        t = 0
        for index in np.flatnonzero(hidden[b]):
            target = numpy_patch(images[b], index // columns, index % columns, p)
            if normalize:
                target = (target - target.mean()) / np.sqrt(target.var(ddof=1) + 1e-6)
            total += np.mean((predictions[b, t] - target) ** 2)
            count += 1
            t += 1
    return total / count


def numpy_ijepa(predictions: np.ndarray, target_tokens: np.ndarray, blocks: np.ndarray, beta: float) -> float:
    """``predictions`` (B, M, T, D); ``target_tokens`` (B, L, D); ``blocks`` (B, M, L) 0/1."""
    mean = target_tokens.mean(axis=-1, keepdims=True)
    normed = (target_tokens - mean) / np.sqrt(target_tokens.var(axis=-1, keepdims=True) + 1e-5)
    values = []
    for b in range(blocks.shape[0]):
        for m in range(blocks.shape[1]):
            for t, index in enumerate(np.flatnonzero(blocks[b, m])):
                diff = np.abs(predictions[b, m, t] - normed[b, index])
                values.extend(np.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta))
    return float(np.mean(values))


def random_hidden(batch: int, length: int, count: int) -> np.ndarray:
    hidden = np.zeros((batch, length), dtype=bool)
    for b in range(batch):
        hidden[b, RNG.choice(length, count, replace=False)] = True
    return hidden


def mae_outputs(images, predictions, hidden, grid, is_global=(True,)):
    masks = Masks(torch.tensor(~hidden), torch.tensor(hidden).unsqueeze(1))
    batch, dim = images.shape[0], 8
    tokens = Tokens(torch.zeros(batch, 1, dim), torch.zeros(batch, int((~hidden[0]).sum()), dim), grid, torch.zeros(batch, dim))
    views = [torch.tensor(images)] * len(is_global)
    return step_outputs([torch.zeros(batch, dim)] * len(is_global), list(is_global), masks=[masks] * len(is_global),
                        tokens=[tokens] * len(is_global), token_predictions=[predictions] * len(is_global), views=views)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("channels, p, grid", [(1, 4, (2, 3)), (3, 2, (3, 3))])
def test_mae_loss_equals_the_reference_and_its_gradient(normalize, channels, p, grid):
    batch, length = 3, grid[0] * grid[1]
    images = RNG.normal(size=(batch, channels, grid[0] * p, grid[1] * p))
    hidden = random_hidden(batch, length, count=length - 2)
    predictions = RNG.normal(size=(batch, length - 2, p * p * channels))
    loss_fn = clrun.create("loss", "clrun/mae", norm_pix_loss=normalize)
    prediction = torch.tensor(predictions[:, None], requires_grad=True)
    loss = loss_fn(mae_outputs(images, prediction, hidden, grid))
    loss.backward()
    expected = numpy_mae(images, predictions, hidden, p, normalize)
    numpy_reference.assert_close(loss.item(), expected)
    [grad] = numpy_reference.central_difference(lambda a: numpy_mae(images, a[0], hidden, p, normalize), [predictions])
    numpy_reference.assert_close(prediction.grad[:, 0].numpy(), grad, rtol=1e-6)


def test_mae_loss_averages_its_masked_views_and_ignores_the_others():
    grid, p = (2, 2), 3
    images = RNG.normal(size=(2, 1, 6, 6))
    hidden = random_hidden(2, 4, count=3)
    predictions = RNG.normal(size=(2, 3, 9))
    out = mae_outputs(images, torch.tensor(predictions[:, None]), hidden, grid, is_global=(True, True))
    out.token_predictions[1] = torch.tensor(predictions[:, None] + 1.0)
    loss = clrun.create("loss", "clrun/mae")(out)
    expected = (numpy_mae(images, predictions, hidden, p, True) + numpy_mae(images, predictions + 1.0, hidden, p, True)) / 2
    numpy_reference.assert_close(loss.item(), expected)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_ijepa_loss_equals_the_reference_and_its_gradient(beta):
    batch, length, blocks_per_image, count, dim = 2, 12, 3, 4, 5
    blocks = np.stack([np.stack([random_hidden(1, length, count)[0] for _ in range(blocks_per_image)]) for _ in range(batch)])
    predictions = RNG.normal(size=(batch, blocks_per_image, count, dim))
    target = RNG.normal(loc=2.0, scale=3.0, size=(batch, length, dim))
    visible = torch.ones(batch, length, dtype=torch.bool)
    masks = Masks(visible, torch.tensor(blocks))
    prediction = torch.tensor(predictions, requires_grad=True)
    targets = Tokens(torch.zeros(batch, 0, dim), torch.tensor(target), (3, 4), torch.zeros(batch, dim))
    out = step_outputs([torch.zeros(batch, dim), torch.zeros(batch, dim)], [False, True], masks=[None, masks],
                       token_predictions=[None, prediction], target_tokens=[targets])
    loss = clrun.create("loss", "clrun/ijepa", beta=beta)(out)
    loss.backward()
    numpy_reference.assert_close(loss.item(), numpy_ijepa(predictions, target, blocks, beta))
    [grad] = numpy_reference.central_difference(lambda a: numpy_ijepa(a[0], target, blocks, beta), [predictions])
    numpy_reference.assert_close(prediction.grad.numpy(), grad, rtol=1e-6, atol_scale=1e-8)


def test_the_losses_name_the_recipe_sections_they_need():
    plain = step_outputs([torch.zeros(4, 8), torch.zeros(4, 8)])
    with pytest.raises(ComponentError) as mae:
        clrun.create("loss", "clrun/mae")(plain)
    assert str(mae.value) == (
        "clrun/mae compares a token head's predictions at the hidden patches of the global views with their "
        "targets: the recipe needs a global view, a ViT backbone and a masking: section with a head, e.g. masking: "
        "{generator: {name: clrun/random_mask}, hidden: drop, head: {name: clrun/mae_decoder}} (recipes/mae_fmnist.yaml)")
    hidden = random_hidden(2, 4, count=2)
    out = mae_outputs(RNG.normal(size=(2, 1, 4, 4)), torch.zeros(2, 1, 2, 4), hidden, (2, 2))
    with pytest.raises(ComponentError, match=r"clrun/ijepa predicts the momentum target encoder's patch tokens: "
                                             r"add a target: section to the recipe \(e\.g\. momentum: 0\.996\)"):
        clrun.create("loss", "clrun/ijepa")(out)
    with pytest.raises(ComponentError, match=r"the token head predicts \(2, 1, 2, 4\) values at the hidden patches, their "
                                             r"pixels are \(2, 1, 2, 9\)"):
        clrun.create("loss", "clrun/mae")(mae_outputs(RNG.normal(size=(2, 1, 6, 6)), torch.zeros(2, 1, 2, 4), hidden, (2, 2)))
    with pytest.raises(ComponentError, match=r"beta: must be a number > 0 \(the official code uses 1\), got 0"):
        clrun.create("loss", "clrun/ijepa", beta=0)


def test_the_losses_make_no_host_sync_with_masks_that_know_their_counts():
    """The targets are gathered by the index the masks know; masks without counts read them (the same loss)."""
    from clrun.host_syncs import HostSyncCounter

    device = torch.device("cpu")  # named: the counter takes what is made on it for device data
    torch.manual_seed(0)
    drop = clrun.create("mask", "clrun/random_mask")(2, (2, 3), device)
    blocks = clrun.create("mask", "clrun/multiblock_mask", min_keep=1)(2, (3, 4), device)
    images = torch.randn(2, 1, 8, 12, device=device)
    pixels = torch.randn(2, 1, drop.target_count, 16, device=device)
    tokens = Tokens(torch.zeros(2, 0, 5, device=device), torch.randn(2, 12, 5, device=device), (3, 4), torch.zeros(2, 5))
    predicted = torch.randn(2, 4, blocks.target_count, 5, device=device)

    def losses(drop_masks: Masks, block_masks: Masks) -> list[torch.Tensor]:
        grid_tokens = Tokens(tokens.prefix, tokens.patches[:, :drop.visible_count], (2, 3), tokens.pooled)
        mae = step_outputs([torch.zeros(2, 5)], [True], masks=[drop_masks], tokens=[grid_tokens],
                           token_predictions=[pixels], views=[images])
        ijepa = step_outputs([torch.zeros(2, 5)], [True], masks=[block_masks], token_predictions=[predicted],
                             target_tokens=[tokens])
        return [clrun.create("loss", "clrun/mae")(mae), clrun.create("loss", "clrun/ijepa")(ijepa)]

    with HostSyncCounter() as counter:
        counter.counting = True
        known = losses(drop, blocks)
    assert dict(counter.counts) == {}
    unknown = losses(Masks(drop.visible, drop.targets), Masks(blocks.visible, blocks.targets))
    for a, b in zip(known, unknown):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
