"""The mask generators' statistics against NumPy re-implementations of the official code's loops.

References, written per image with Python's ``random`` as the authors' code draws them:
- MAE (facebookresearch/mae, ``random_masking``): ``int(L (1 - ratio))`` kept patches, uniformly.
- BEiT/iBOT block masking (microsoft/unilm ``MaskingGenerator``, iBOT's ``ImageFolderMask``): rectangles
  of area U(min_area, remaining) and log-uniform aspect, kept when ``0 < new <= remaining``, 10 tries.
- I-JEPA (facebookresearch/ijepa ``MaskCollator``): one target size and one context size per batch,
  4 target blocks per image, the context block minus them, contexts cut to the batch's smallest.
The generators draw all images at once with torch (MAE's on the device, the block ones on the host), so
draws differ; their distributions (over a few thousand images) must match the references' within Monte
Carlo error. Shapes, dtypes, disjointness and seeding for every generator are the contracts of
tests/unit/testing/test_mask_contracts.py; the counts they give, test_known_counts.py.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

import clrun
from clrun import ComponentError

IMAGES = 3000


def generator(name: str, **settings):
    return clrun.create("mask", name, **settings)


def beit_block_mask(rng: random.Random, h: int, w: int, probability: float, ratio: tuple[float, float],
                    aspect: tuple[float, float]) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    if rng.random() >= probability:
        return mask
    wanted = rng.uniform(*ratio) * h * w  # iBOT's ImageFolderMask: a float bound, so at most floor(ratio L)
    low = (min(h, w) // 3) ** 2
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while count < wanted:
        remaining, delta = wanted - count, 0
        for _ in range(10):
            area = rng.uniform(low, remaining)
            a = math.exp(rng.uniform(*log_aspect))
            bh, bw = int(round(math.sqrt(area * a))), int(round(math.sqrt(area / a)))
            if 0 < bw < w and 0 < bh < h:
                top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
                new = bh * bw - mask[top:top + bh, left:left + bw].sum()
                if 0 < new <= remaining:
                    mask[top:top + bh, left:left + bw] = True
                    delta = new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def rows_touched(masks: np.ndarray) -> np.ndarray:
    """Per masked image, how many grid rows hold a hidden patch: a shape statistic (blocks vs scatter)."""
    return masks.any(axis=2).sum(axis=1)[masks.any(axis=(1, 2))]


def test_random_mask_hides_the_same_count_uniformly():
    masks = generator("clrun/random_mask")(IMAGES, (14, 14))
    hidden = masks.hidden
    assert (hidden.sum(dim=1) == 196 - int(196 * 0.25)).all()
    frequency = hidden.float().mean(dim=0)  # per position: 0.75 with a standard error of 0.008
    assert (frequency - 0.75).abs().max() < 0.04
    assert torch.equal(masks.targets[:, 0], hidden)


@pytest.mark.parametrize("grid,settings", [((14, 14), {}), ((4, 4), {}), ((14, 14), {"probability": 1.0, "ratio": [0.3, 0.3]})])
def test_block_mask_statistics_match_beits_loop(grid, settings):
    h, w = grid
    probability, ratio = settings.get("probability", 0.5), tuple(settings.get("ratio", (0.1, 0.5)))
    torch.manual_seed(0)
    ours = generator("clrun/block_mask", **settings)(IMAGES, grid).hidden.view(IMAGES, h, w).numpy()
    rng = random.Random(0)
    ref = np.stack([beit_block_mask(rng, h, w, probability, ratio, (0.3, 1 / 0.3)) for _ in range(IMAGES)])
    for name, stat in (("masked images", lambda m: m.any(axis=(1, 2)).astype(float)),
                       ("hidden patches of a masked image", lambda m: m.sum(axis=(1, 2))[m.any(axis=(1, 2))]),
                       ("rows touched", lambda m: rows_touched(m).astype(float))):
        a, b = stat(ours), stat(ref)
        error = math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * error + 1e-9, (name, a.mean(), b.mean(), error)
    assert ours.sum(axis=(1, 2)).max() <= math.floor(ratio[1] * h * w)


def ijepa_batch(rng: random.Random, batch: int, h: int, w: int, min_keep: int = 10) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The official MaskCollator's masks for one batch (``allow_overlap=False``), as boolean grids; the block
    positions as cl-run draws them (every position: the official ``torch.randint(0, H - h)`` never reaches the
    last row or column, facebookresearch/ijepa#40, which cl-run does not copy)."""
    def size(scale, aspect):
        r = rng.random()
        keep = int(h * w * (scale[0] + r * (scale[1] - scale[0])))
        a = aspect[0] + r * (aspect[1] - aspect[0])
        bh, bw = int(round(math.sqrt(keep * a))), int(round(math.sqrt(keep / a)))
        return min(bh, h - 1), min(bw, w - 1)

    (th, tw), (ch, cw) = size((0.15, 0.2), (0.75, 1.5)), size((0.85, 1.0), (1.0, 1.0))

    def block(bh, bw):
        m = np.zeros((h, w), dtype=bool)
        top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
        m[top:top + bh, left:left + bw] = True
        return m

    targets = np.stack([np.stack([block(th, tw) for _ in range(4)]) for _ in range(batch)])
    contexts = []
    for i in range(batch):
        context = None
        for excluded in range(4, -1, -1):  # constrain_mask(mask, tries): after 20 tries, one target fewer cut out
            allowed = ~targets[i][:excluded].any(axis=0)
            for _ in range(20):
                c = block(ch, cw) & allowed
                if c.sum() > min_keep:  # multiblock.py: len(mask) > self.min_keep
                    context = c
                    break
            if context is not None:
                break
        contexts.append(context.reshape(-1))
    contexts = np.stack(contexts)
    smallest = contexts.sum(axis=1).min()
    contexts &= np.cumsum(contexts, axis=1) <= smallest
    return contexts, targets.reshape(batch, 4, -1), (th, tw, ch, cw)


def test_multiblock_block_sizes_follow_the_official_formula():
    for draw in (0.0, 0.37, 0.999):
        bh, bw = clrun.create("mask", "clrun/multiblock_mask").block_size(draw, (0.15, 0.2), (0.75, 1.5), (14, 14))
        keep = int(196 * (0.15 + draw * 0.05))
        ratio = 0.75 + draw * 0.75
        assert (bh, bw) == (round(math.sqrt(keep * ratio)), round(math.sqrt(keep / ratio)))


def test_multiblock_masks_are_rectangles_and_contexts_match_ijepas_collator():
    torch.manual_seed(0)
    rng = random.Random(0)
    gen = generator("clrun/multiblock_mask")
    ours_visible, ref_visible = [], []
    for _ in range(100):  # 100 batches of 32: sizes are drawn per batch
        masks = gen(32, (14, 14))
        targets = masks.targets.view(32, 4, 14, 14)
        rows, cols = targets.any(dim=3).sum(dim=2), targets.any(dim=2).sum(dim=2)
        sizes = targets.sum(dim=(2, 3))
        assert (rows * cols == sizes).all() and (sizes == sizes[0, 0]).all()  # one rectangle size per batch
        assert 0.15 * 196 - 8 <= sizes[0, 0] <= 0.2 * 196 + 1  # int() of the area, then rounded sides
        assert 0.75 / 1.6 <= (rows[0, 0] / cols[0, 0]).item() <= 1.5 * 1.6
        ours_visible.append(masks.visible.sum(dim=1).float().mean().item())
        ref_visible.append(ijepa_batch(rng, 32, 14, 14)[0].sum(axis=1).mean())
    a, b = np.array(ours_visible), np.array(ref_visible)
    error = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4 * error, (a.mean(), b.mean(), error)
    # The context minus 4 targets, cut to the batch's smallest: about 55 of 196 patches (both sides).
    assert 45 < a.mean() < 65


@pytest.mark.parametrize("name,settings,message", [
    ("clrun/random_mask", {"ratio": 1.0},
     "clrun.create('mask', 'clrun/random_mask'): ratio: must be a number > 0 and < 1 (MAE uses 0.75), got 1.0"),
    ("clrun/block_mask", {"ratio": [0.5, 0.1]},
     "clrun/block_mask: ratio must be a pair [a, b] with 0 < a <= b <= 1 (iBOT uses [0.1, 0.5]), got [0.5, 0.1]"),
    ("clrun/block_mask", {"probability": 2},
     "clrun.create('mask', 'clrun/block_mask'): probability: must be a number >= 0 and <= 1 (iBOT uses 0.5), got 2.0"),
    ("clrun/multiblock_mask", {"targets": 0},
     "clrun.create('mask', 'clrun/multiblock_mask'): targets: must be an integer >= 1 (I-JEPA uses 4), got 0"),
])
def test_bad_settings_are_refused_with_the_papers_values(name, settings, message):
    with pytest.raises(ComponentError) as info:
        clrun.create("mask", name, **settings)
    assert str(info.value) == message
