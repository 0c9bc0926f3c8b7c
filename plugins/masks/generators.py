"""Mask generators over a ViT's patch grid (``mask`` components): MAE's random patches, BEiT/iBOT's blocks,
I-JEPA's context and target blocks. Each draws a whole batch from torch's default random stream (seeded
and checkpointed by the training loop) and returns ``clrun.Masks`` with the counts it knows on the host.

MAE's draw is a fixed amount of work with a fixed count: it runs on the device. The block draws loop
until each image has enough patches (BEiT's), or cut the contexts to the smallest count (I-JEPA's): on
the device the host would wait to read those every step, so they draw on the host CPU, where reading is
free, and upload the masks without blocking (``Masks.to``), as the official code draws them in its data
loader. On a CPU run host and device share one stream: the masks are those a device draw gives there."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor

from clrun import ComponentError, Masks, Range, checked


def _grid(grid: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in grid)
    if h < 1 or w < 1:
        raise ValueError(f"a patch grid must have at least one row and column, got {grid}")
    return h, w


def rectangles(top: Tensor, left: Tensor, height: Tensor, width: Tensor, grid: tuple[int, int]) -> Tensor:
    """Boolean masks ``(*, H * W)`` of the rectangles with corner ``(top, left)`` and size ``height x width``
    (host tensors of one shape ``*``) on an ``H x W`` grid, raster order."""
    h, w = grid
    rows = torch.arange(h).view(*([1] * top.ndim), h, 1)
    cols = torch.arange(w).view(*([1] * top.ndim), 1, w)
    t, l_, bh, bw = (v.unsqueeze(-1).unsqueeze(-1) for v in (top, left, height, width))
    inside = (rows >= t) & (rows < t + bh) & (cols >= l_) & (cols < l_ + bw)
    return inside.flatten(-2)


# The block generators' draws, on the host (no device named: torch's CPU stream).
def _uniform(low: float | Tensor, high: float | Tensor, shape: tuple[int, ...]) -> Tensor:
    return low + (high - low) * torch.rand(shape)


def _offsets(room: Tensor) -> Tensor:
    """A uniform integer in ``0..room`` per element (``room >= 0``)."""
    return (torch.rand(room.shape) * (room + 1)).floor().long().clamp(max=room)


@checked
class RandomMask:
    """MAE's masking (He et al. 2022): per image, a uniformly random ``ratio`` of the patches hidden, the
    same count ``L - int(L (1 - ratio))`` for every image (MAE's ``random_masking``: argsort of noise)."""

    equal_counts = True

    def __init__(self, ratio: Annotated[float, Range(min=0, max=1, exclusive_min=True, exclusive_max=True,
                                                     hint="MAE uses 0.75")] = 0.75):
        self.ratio = float(ratio)

    def __call__(self, batch: int, grid: tuple[int, int], device: torch.device | str = "cpu") -> Masks:
        h, w = _grid(grid)
        patches = h * w
        keep = max(1, int(patches * (1 - self.ratio)))
        order = torch.rand(batch, patches, device=device).argsort(dim=1)
        visible = torch.zeros(batch, patches, dtype=torch.bool, device=device)
        visible.scatter_(1, order[:, :keep], True)
        return Masks(visible, (~visible).unsqueeze(1), visible_count=keep, target_count=patches - keep)


@checked
class BlockMask:
    """BEiT's block-wise masking as iBOT uses it (Bao et al. 2021; Zhou et al. 2022, ``ImageFolderMask``).

    Each image is masked with probability ``probability``; a masked image gets a ratio drawn uniformly
    from ``ratio`` and rectangles are added while fewer than ``ratio L`` patches are hidden (a real number, as
    iBOT's bound: no rectangle may pass it, so at most ``floor(ratio L)`` are hidden): each rectangle
    has an area uniform in ``[min_area, patches still to hide]`` (``min_area``: iBOT's
    ``(min(H, W) // 3) ** 2``) and a log-uniform aspect ratio in ``aspect``; it is kept when it hides
    at least one new patch and no more than are still to hide. Ten rejected rectangles in a row end the
    image's draw, as in BEiT. All images are drawn together on the host, one rectangle per image per
    round: how many rounds depends on the draws.
    """

    equal_counts = False
    ATTEMPTS = 10

    def __init__(self, probability: Annotated[float, Range(min=0, max=1, hint="iBOT uses 0.5")] = 0.5,
                 ratio: tuple[float, float] = (0.1, 0.5), aspect: tuple[float, float] = (0.3, 1 / 0.3)):
        self.probability = float(probability)
        self.ratio = _range(self, "ratio", ratio, 0.0, 1.0, "iBOT uses [0.1, 0.5]")
        self.aspect = _range(self, "aspect", aspect, 0.0, math.inf, "iBOT uses [0.3, 3.33]")

    def __call__(self, batch: int, grid: tuple[int, int], device: torch.device | str = "cpu") -> Masks:
        h, w = _grid(grid)
        masked_image = torch.rand(batch) < self.probability
        wanted = _uniform(*self.ratio, (batch,)) * h * w * masked_image  # a real bound, as iBOT's
        min_area = float((min(h, w) // 3) ** 2)
        log_aspect = [math.log(a) for a in self.aspect]
        mask = torch.zeros(batch, h * w, dtype=torch.bool)
        count = torch.zeros(batch)
        failures = torch.zeros(batch, dtype=torch.long)
        active = wanted > 0
        while bool(active.any()):  # host tensors: reading them costs the device nothing
            remaining = wanted - count
            area = _uniform(min_area, remaining, (batch,))
            aspect = torch.exp(_uniform(*log_aspect, (batch,)))
            bh = torch.round(torch.sqrt(area * aspect)).long()
            bw = torch.round(torch.sqrt(area / aspect)).long()
            fits = (bh < h) & (bw < w) & (bh > 0) & (bw > 0)
            bh, bw = torch.where(fits, bh, 1), torch.where(fits, bw, 1)
            block = rectangles(_offsets(h - bh), _offsets(w - bw), bh, bw, (h, w))
            new = (block & ~mask).sum(dim=1)
            accept = active & fits & (new > 0) & (new <= remaining)
            mask |= block & accept.unsqueeze(1)
            count += new * accept
            failures = torch.where(accept, 0, failures + 1)
            active &= (count < wanted) & (failures < self.ATTEMPTS)
        return Masks(~mask, mask.unsqueeze(1)).to(device)  # counts vary per image: none to give


@checked
class MultiBlockMask:
    """I-JEPA's context and target blocks (Assran et al. 2023; ``MaskCollator`` in facebookresearch/ijepa).

    Per batch, one target block size is drawn (scale in ``target_scale`` of the grid, aspect ratio in
    ``target_aspect``, one uniform number for both, as the official collator) and one context size
    (scale in ``context_scale``, square). Per image: ``targets`` target blocks at uniform positions
    (they may overlap each other), and a context block at a uniform position minus every target block;
    of ``CONTEXT_TRIES`` context positions the first that keeps more than ``min_keep`` patches is taken, and
    when none does, the last target block is no longer cut out and fresh positions are tried, then the last
    two, ... (the official ``constrain_mask(mask, tries)``): on a small grid a context may then show some target
    patches, as the official one does (``targets_always_hidden``; on 14 x 14 or 16 x 16 grids with ``min_keep`` 10
    it does not happen). Contexts are then cut
    to the batch's smallest (the last patches in raster order go), so every image keeps the same count.
    Drawn on the host, which knows that count without waiting for the device.
    """

    equal_counts = True
    targets_always_hidden = False  # the official relaxation above (clrun.testing's targets_are_hidden)
    CONTEXT_TRIES = 20

    def __init__(self, targets: Annotated[int, Range(min=1, hint="I-JEPA uses 4")] = 4,
                 target_scale: tuple[float, float] = (0.15, 0.2), target_aspect: tuple[float, float] = (0.75, 1.5),
                 context_scale: tuple[float, float] = (0.85, 1.0),
                 min_keep: Annotated[int, Range(min=1, hint="I-JEPA uses 10")] = 10):
        self.targets = targets
        self.target_scale = _range(self, "target_scale", target_scale, 0.0, 1.0, "I-JEPA uses [0.15, 0.2]")
        self.target_aspect = _range(self, "target_aspect", target_aspect, 0.0, math.inf, "I-JEPA uses [0.75, 1.5]")
        self.context_scale = _range(self, "context_scale", context_scale, 0.0, 1.0, "I-JEPA uses [0.85, 1.0]")
        self.min_keep = min_keep

    @staticmethod
    def block_size(draw: float, scale: tuple[float, float], aspect: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
        """The official ``_sample_block_size``: one uniform ``draw`` sets both the scale and the aspect."""
        h, w = grid
        area = int(h * w * (scale[0] + draw * (scale[1] - scale[0])))
        ratio = aspect[0] + draw * (aspect[1] - aspect[0])
        bh, bw = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        return max(1, min(bh, h - 1)), max(1, min(bw, w - 1))

    def __call__(self, batch: int, grid: tuple[int, int], device: torch.device | str = "cpu") -> Masks:
        h, w = _grid(grid)
        if h < 2 or w < 2:
            raise ValueError(f"{self.component_name} needs a patch grid of at least 2 x 2, got {h} x {w}")
        draws = torch.rand(2).tolist()  # the sizes are Python numbers
        th, tw = self.block_size(draws[0], self.target_scale, self.target_aspect, (h, w))
        ch, cw = self.block_size(draws[1], self.context_scale, (1.0, 1.0), (h, w))

        def blocks(n: int, bh: int, bw: int) -> Tensor:
            size = torch.full((batch, n), 1, dtype=torch.long)
            return rectangles(_offsets(size * (h - bh)), _offsets(size * (w - bw)), size * bh, size * bw, (h, w))

        targets = blocks(self.targets, th, tw)  # (B, M, L)
        rows = torch.arange(batch)
        context = torch.zeros(batch, h * w, dtype=torch.bool)
        found = torch.zeros(batch, dtype=torch.bool)
        for excluded in range(self.targets, -1, -1):  # all target blocks cut out, then all but the last, ...
            allowed = ~targets[:, :excluded].any(dim=1)  # (B, L)
            contexts = blocks(self.CONTEXT_TRIES, ch, cw) & allowed.unsqueeze(1)  # fresh positions: (B, tries, L)
            kept = contexts.sum(dim=2)
            enough = kept > self.min_keep
            pick = enough.any(dim=1) & ~found  # the first try that keeps more than min_keep
            context = torch.where(pick.unsqueeze(1), contexts[rows, enough.float().argmax(dim=1)], context)
            found |= pick
            if bool(found.all()):
                break
        if not bool(found.all()):  # none keeps enough even uncut (a tiny grid): the last level's fullest try
            context = torch.where(found.unsqueeze(1), context, contexts[rows, kept.argmax(dim=1)])
        smallest = int(context.sum(dim=1).min())
        context &= context.cumsum(dim=1) <= smallest
        return Masks(context, targets, visible_count=smallest, target_count=th * tw).to(device)


def _range(mask: object, name: str, value: object, low: float, high: float, hint: str) -> tuple[float, float]:
    """``value`` as a pair ``[a, b]`` with ``low < a <= b`` and ``b <= high`` (a relation of two numbers, which
    a ``clrun.Range`` cannot declare); ``mask`` names the error."""
    valid = (isinstance(value, (list, tuple)) and len(value) == 2
             and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not valid or not low < value[0] <= value[1] or value[1] > high:
        bound = "" if math.isinf(high) else f" <= {high:g}"
        got = list(value) if isinstance(value, tuple) else value  # the factory hands a recipe's list as a tuple
        raise ComponentError(f"{mask.component_name}: {name} must be a pair [a, b] with {low:g} < a <= b{bound} ({hint}), got {got!r}",
                             argument=name)
    return float(value[0]), float(value[1])
