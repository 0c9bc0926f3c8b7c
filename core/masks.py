"""What a mask generator draws for a batch: which patch tokens the student sees, and which it predicts.

Token-level methods hide part of each image's patch grid from the online network and train it to
predict what is hidden: iBOT replaces the hidden patches by a learned mask token, MAE's encoder and
I-JEPA's context encoder drop them. A ``mask`` component is called once per batch,

    masks = generator(batch_size, (grid_height, grid_width), device)

and returns ``Masks`` on ``device``, drawn from torch's default random streams, which the training loop
seeds and checkpoints: a resumed run draws the masks an uninterrupted one would.

A GPU runs ahead of the host until the host reads a value back, so a training step must not read the
masks. Where a token is dropped or a target gathered the host needs how many patches there are: a
generator that knows its counts on the host (a Python number it drew or fixed) gives them in ``Masks``,
and the token paths gather by index with them (``visible_index``, ``target_index``) without a read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # `import clrun` stays free of torch
    import torch
    from torch import Tensor


@dataclass(frozen=True, eq=False)  # tensors: compared by identity, not element-wise
class Masks:
    """A batch's masks over its ``L = grid_height x grid_width`` patches, in raster order.

    visible: ``(B, L)`` bool, the patches the online network sees. A generator for token-dropping
             methods (MAE, I-JEPA) keeps the same number per image (its class attribute
             ``equal_counts`` is True), so the kept tokens stack into one ``(B, K, D)`` tensor; one for
             mask-token methods (iBOT) may vary it.
    targets: ``(B, M, L)`` bool, ``M`` sets of patches to predict per image (I-JEPA: 4 target blocks;
             iBOT and MAE: one set, the hidden patches); with ``equal_counts``, each set has one size
             across the batch.
    visible_count: ``K``, the visible patches of every image, when the generator knows it on the host
             (None: read from ``visible`` when needed, a host sync).
    target_count: ``T``, the patches of every target set, likewise.

    A count given must be the mask's: the indices are the first ``count`` patches the mask holds.
    """

    visible: Tensor
    targets: Tensor
    visible_count: Optional[int] = None
    target_count: Optional[int] = None

    @property
    def hidden(self) -> Tensor:
        """``(B, L)`` bool: the patches the online network does not see."""
        return ~self.visible

    @cached_property  # a frozen dataclass still has a __dict__: computed once per Masks, on first use
    def visible_index(self) -> Tensor:
        """``(B, K)`` long: each image's visible patches in raster order, what dropping the hidden ones keeps."""
        count = self.visible_count
        if count is None:
            count = _read_common_count(self.visible, "every image must keep the same number of visible patches")
        return first_true(self.visible, count)

    @cached_property
    def target_index(self) -> Tensor:
        """``(B, M, T)`` long: each target set's patches in raster order."""
        count = self.target_count
        if count is None:
            count = _read_common_count(self.targets, "every target set must have the same number of patches")
        return first_true(self.targets, count)

    def at_targets(self, values: Tensor) -> Tensor:
        """``values`` ``(B, L, ...)`` given per patch (target tokens, pixels), at each target set's patches:
        ``(B, M, T, ...)`` in raster order, where every set has ``T`` patches (a generator with
        ``equal_counts``). What a token head predicts there, a token-level loss compares with this."""
        batch, sets, length = self.targets.shape
        if tuple(values.shape[:2]) != (batch, length):
            raise ValueError(f"Masks.at_targets: values must be ({batch}, {length}, ...) for these masks, "
                             f"got {tuple(values.shape)}")
        index = self.target_index
        count = index.shape[-1]
        flat = values.reshape(batch, length, -1)  # one gather for any trailing shape
        picked = flat.gather(1, index.reshape(batch, sets * count, 1).expand(-1, -1, flat.shape[-1]))
        return picked.view(batch, sets, count, *values.shape[2:])

    def to(self, device: torch.device | str) -> Masks:
        """These masks (drawn on the host) on ``device``, copied without the host waiting for the copy: on
        CUDA from pinned memory, as a copy from pageable memory would hold the host until it is done."""
        import torch

        device = torch.device(device)

        def upload(mask: Tensor) -> Tensor:
            if device.type == "cuda" and mask.device.type == "cpu":
                mask = mask.pin_memory()
            return mask.to(device, non_blocking=True)

        return Masks(upload(self.visible), upload(self.targets), self.visible_count, self.target_count)


def first_true(mask: Tensor, count: int) -> Tensor:
    """``(*, count)`` long: the positions of the first ``count`` True values along ``mask``'s last dimension,
    in order. A stable sort of ``not mask`` puts them first in their order: a gather index whose size the
    host knows, where ``nonzero`` (or a boolean index) would wait for the device to say how many there are."""
    import torch

    return (~mask).to(torch.uint8).argsort(dim=-1, stable=True)[..., :count]


def _read_common_count(mask: Tensor, rule: str) -> int:
    """The number of True values along ``mask``'s last dimension, which must be one for all its rows: read
    back (one host sync), for masks whose generator gave no count."""
    import torch

    counts = mask.sum(dim=-1).flatten()
    low, high = torch.stack([counts.min(), counts.max()]).tolist()
    if low != high:
        raise ValueError(f"Masks: {rule} (a generator with equal_counts); got {sorted(set(counts.tolist()))}")
    return int(low)
