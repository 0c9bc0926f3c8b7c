"""What a mask generator draws for a batch: which patch tokens the student sees, and which it predicts.

Token-level methods hide part of each image's patch grid from the online network and train it to
predict what is hidden: iBOT replaces the hidden patches by a learned mask token, MAE's encoder and
I-JEPA's context encoder drop them. A ``mask`` component is called once per batch,

    masks = generator(batch_size, (grid_height, grid_width), device)

and returns ``Masks``. Generators draw on the device with torch's default random stream, which the
training loop seeds and checkpoints: a resumed run draws the masks an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `import clrun` stays free of torch
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
    """

    visible: Tensor
    targets: Tensor

    @property
    def hidden(self) -> Tensor:
        """``(B, L)`` bool: the patches the online network does not see."""
        return ~self.visible

    def at_targets(self, values: Tensor) -> Tensor:
        """``values`` ``(B, L, ...)`` given per patch (target tokens, pixels), at each target set's patches:
        ``(B, M, T, ...)`` in raster order, where every set has ``T`` patches (a generator with
        ``equal_counts``). What a token head predicts there, a token-level loss compares with this."""
        batch, sets, length = self.targets.shape
        if tuple(values.shape[:2]) != (batch, length):
            raise ValueError(f"Masks.at_targets: values must be ({batch}, {length}, ...) for these masks, "
                             f"got {tuple(values.shape)}")
        counts = self.targets.sum(dim=-1)
        if bool((counts != counts[0, 0]).any()):
            raise ValueError("Masks.at_targets: every target set must have the same number of patches (a "
                             f"generator with equal_counts); got {sorted(set(counts.flatten().tolist()))}")
        spread = values.unsqueeze(1).expand(batch, sets, *values.shape[1:])
        return spread[self.targets].view(batch, sets, int(counts[0, 0]), *values.shape[2:])
