"""Masks that carry their counts: the generators give the counts they know on the host, ``clrun.Masks``
gathers by index with them (``visible_index``, ``target_index``, ``at_targets``), and neither drawing nor
gathering makes a GPU wait for the host (counted on the CPU by ``clrun.host_syncs``, where a tensor made
with ``device=`` stands for one on the training device)."""

from __future__ import annotations

import pytest
import torch

import clrun
from clrun import Masks
from clrun.host_syncs import HostSyncCounter

DEVICE = torch.device("cpu")  # named: the counter takes what is made on it for device data
GRIDS = ((14, 14), (4, 4), (6, 9))


def generator(name: str, **settings):
    return clrun.create("mask", name, **settings)


def syncs(counter: HostSyncCounter) -> dict[str, int]:
    return dict(counter.counts)


@pytest.mark.parametrize("name", ["clrun/random_mask", "clrun/multiblock_mask"])
def test_equal_count_generators_give_the_counts_their_masks_hold(name):
    torch.manual_seed(0)
    for grid in GRIDS:
        masks = generator(name)(16, grid, DEVICE)
        assert isinstance(masks.visible_count, int) and isinstance(masks.target_count, int)
        assert (masks.visible.sum(dim=1) == masks.visible_count).all()
        assert (masks.targets.sum(dim=2) == masks.target_count).all()


def test_block_masks_vary_per_image_and_give_no_counts():
    torch.manual_seed(0)
    masks = generator("clrun/block_mask")(64, (14, 14), DEVICE)
    assert masks.visible_count is None and masks.target_count is None
    assert len(set(masks.visible.sum(dim=1).tolist())) > 1


@pytest.mark.parametrize("name", ["clrun/random_mask", "clrun/block_mask", "clrun/multiblock_mask"])
def test_drawing_makes_no_host_sync(name):
    """BEiT's loop reads whether images still need blocks and I-JEPA's cut reads the smallest context:
    on the host, as drawn here, those reads cost the device nothing; the upload does not block."""
    torch.manual_seed(0)
    with HostSyncCounter() as counter:
        counter.counting = True
        masks = generator(name, **({"probability": 1.0} if name == "clrun/block_mask" else {}))(16, (14, 14), DEVICE)
    assert syncs(counter) == {}
    assert masks.visible.dtype == torch.bool and (~masks.visible).any()


@pytest.mark.parametrize("name", ["clrun/random_mask", "clrun/multiblock_mask"])
def test_gathering_with_known_counts_makes_no_host_sync(name):
    torch.manual_seed(0)
    masks = generator(name)(8, (14, 14), DEVICE)
    values = torch.randn(8, 196, 5, device=DEVICE)
    with HostSyncCounter() as counter:
        counter.counting = True
        kept, picked = masks.visible_index, masks.at_targets(values)
    assert syncs(counter) == {}
    assert kept.shape == (8, masks.visible_count) and picked.shape[2] == masks.target_count


def boolean_reference(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` at ``mask``'s patches, row by row, by boolean indexing: what the gathers must equal."""
    return torch.stack([values[b][mask[b]] for b in range(len(mask))])


@pytest.mark.parametrize("name", ["clrun/random_mask", "clrun/multiblock_mask"])
def test_the_indices_are_the_masks_patches_in_raster_order(name):
    torch.manual_seed(1)
    masks = generator(name)(6, (6, 9), DEVICE)
    positions = torch.arange(54).expand(6, 54)
    assert torch.equal(masks.visible_index, boolean_reference(masks.visible, positions))
    for m in range(masks.targets.shape[1]):
        assert torch.equal(masks.target_index[:, m], boolean_reference(masks.targets[:, m], positions))


@pytest.mark.parametrize("trailing", [(), (3,), (2, 4)])
def test_at_targets_equals_boolean_indexing_for_any_trailing_shape(trailing):
    torch.manual_seed(2)
    masks = generator("clrun/multiblock_mask")(4, (6, 6), DEVICE)
    values = torch.randn(4, 36, *trailing, requires_grad=True)
    picked = masks.at_targets(values)
    expected = torch.stack([boolean_reference(masks.targets[:, m], values) for m in range(masks.targets.shape[1])], dim=1)
    assert picked.shape == (4, masks.targets.shape[1], masks.target_count, *trailing)
    assert torch.equal(picked, expected)
    # Overlapping target blocks: a patch's gradient sums what each block asks of it.
    weights = torch.randn_like(picked)
    (grad,) = torch.autograd.grad((picked * weights).sum(), values)
    (reference,) = torch.autograd.grad((expected * weights).sum(), values)
    torch.testing.assert_close(grad, reference, rtol=0, atol=1e-6)


def test_masks_without_counts_read_them_once_and_gather_the_same():
    """A third-party generator may give no counts: the gathers then read the count back (one sync each)."""
    torch.manual_seed(3)
    known = generator("clrun/random_mask")(5, (4, 4), DEVICE)
    unknown = Masks(known.visible, known.targets)
    values = torch.randn(5, 16, 7, device=DEVICE)
    with HostSyncCounter() as counter:
        counter.counting = True
        picked = unknown.at_targets(values)
    assert sum(counter.counts.values()) == 1
    assert torch.equal(picked, known.at_targets(values))
    assert torch.equal(unknown.visible_index, known.visible_index)


def test_uneven_masks_without_counts_are_refused_naming_the_counts():
    visible = torch.ones(3, 16, dtype=torch.bool)
    visible[0, :3] = False
    masks = Masks(visible, (~visible).unsqueeze(1))
    with pytest.raises(ValueError, match=r"^Masks: every image must keep the same number of visible patches \(a "
                                         r"generator with equal_counts\); got \[13, 16\]$"):
        masks.visible_index
    with pytest.raises(ValueError, match=r"^Masks: every target set must have the same number of patches .*got \[0, 3\]$"):
        masks.at_targets(torch.zeros(3, 16))


def test_moving_masks_keeps_their_counts_and_values():
    masks = generator("clrun/multiblock_mask")(4, (14, 14))
    moved = masks.to(DEVICE)
    assert (moved.visible_count, moved.target_count) == (masks.visible_count, masks.target_count)
    assert torch.equal(moved.visible, masks.visible) and torch.equal(moved.targets, masks.targets)
