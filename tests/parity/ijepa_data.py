"""The I-JEPA parity run's inputs: one view per image, and the masks of the official ``MaskCollator``, bit-packed.

Views: I-JEPA's training transform (src/transforms.py, with the official configs' ``use_horizontal_flip: false``,
``use_color_distortion: false``, ``use_gaussian_blur: false``) is ``RandomResizedCrop(crop_size, scale=crop_scale)``
then ``ToTensor`` and ``Normalize``: no flip. Here, as for MAE: ``views.make_spec`` with one "global" crop of 28 px,
the configs' scale (0.3, 1.0), no local crop, draws each step's 8 Fashion-MNIST indices and one box per image;
the flips it draws are set to 0 (the draws still happen, so the boxes are those of the same seed with flips).
``views.render`` makes the batch (bilinear, no antialiasing; mean 0.286, std 0.353; 1 channel).

Masks: per step, one context block and 4 target blocks per image over the 7 x 7 patch grid (28 px, 4 px patches),
as the official collator returns them (src/masks/multiblock.py): ``masks_enc``, a list of one ``(B, K)`` tensor
of patch indices (the context, the same count ``K`` in every image: each image's context cut to the batch's
smallest), and ``masks_pred``, a list of 4 ``(B, T)`` tensors (the targets). The indices are ascending (they come
from ``torch.nonzero``, and the cut keeps the first ones), so a boolean mask holds all they say: ``pack`` stores
per step one hex string of the bits of ``(block, image, patch)``, block 0 the context and 1..4 the targets,
patches in raster order, most significant bit first (5 x 8 x 49 = 1960 bits); ``unpack`` and ``indices`` turn
them back into the official lists.

    spec = make_spec(0); images, _ = views.load_train_images()
    x = render(spec, step, images)                      # (8, 1, 28, 28) float64
    context, targets = unpack(packed)                   # (30, 8, 49), (30, 4, 8, 49) bool
    masks_enc, masks_pred = indices(context[s], targets[s])   # the official lists of (8, K), (8, T) int64
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.parity import views as V  # noqa: E402

STEPS, BATCH = V.STEPS, V.BATCH  # 30 steps of 8 images
SIZE, SCALE = 28, (0.3, 1.0)  # crop_size, crop_scale (the official configs' scale)
GRID = 7  # 28 px / 4 px patches
PATCHES = GRID * GRID
TARGETS = 4  # num_pred_masks
CONTEXTS = 1  # num_enc_masks


def make_spec(seed: int) -> dict:
    """``views.make_spec`` with one 28 px crop of scale (0.3, 1) per image and no flips (boxes (30, 8, 1, 4),
    flip (30, 8, 1) all 0)."""
    assert V.GLOBAL_SIZE == SIZE
    spec = V.make_spec(seed, global_crops=1, local_crops=0, global_scale=SCALE)
    spec["flip"] = np.zeros_like(spec["flip"])  # use_horizontal_flip: false
    return spec


def spec_sha256(spec: dict) -> str:
    """The SHA-256 of the spec as JSON (sorted keys): the fixture stores this, the test remakes the spec from its
    seed and checks it."""
    return hashlib.sha256(json.dumps(V.spec_to_json(spec), sort_keys=True).encode()).hexdigest()


def render(spec: dict, step: int, images: torch.Tensor) -> torch.Tensor:
    """The batch of one step: (8, 1, 28, 28) float64."""
    return V.render(spec, step, images)[0]


# ------------------------------------------------------------------------------------------------------ masks
def boolean(index_lists: list[torch.Tensor], patches: int = PATCHES) -> np.ndarray:
    """A list of ``(B, n)`` index tensors -> ``(len, B, patches)`` bool."""
    out = np.zeros((len(index_lists), index_lists[0].shape[0], patches), dtype=bool)
    for block, index in enumerate(index_lists):
        for image, row in enumerate(index.tolist()):
            out[block, image, row] = True
    return out


def pack(context: np.ndarray, targets: np.ndarray) -> list[str]:
    """``(steps, B, L)`` and ``(steps, M, B, L)`` bool -> one hex string per step (the module docstring's order)."""
    both = np.concatenate([np.asarray(context, dtype=bool)[:, None], np.asarray(targets, dtype=bool)], axis=1)
    return [np.packbits(step.reshape(-1)).tobytes().hex() for step in both]


def unpack(packed: list[str], batch: int = BATCH, targets: int = TARGETS) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``pack``: the contexts ``(steps, B, L)`` and the targets ``(steps, M, B, L)``, bool."""
    bits = (1 + targets) * batch * PATCHES
    rows = [np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8))[:bits] for h in packed]
    both = np.stack(rows).astype(bool).reshape(len(packed), 1 + targets, batch, PATCHES)
    return both[:, 0], both[:, 1:]


def indices(context: np.ndarray, targets: np.ndarray) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One step's masks as the official collator returns them: ``masks_enc`` ``[(B, K)]`` and ``masks_pred``
    ``[(B, T)] * M``, int64 patch indices in ascending order (each image of a block must hold the same count)."""
    def as_index(mask: np.ndarray) -> torch.Tensor:
        rows = [np.flatnonzero(m) for m in mask]
        assert len({len(r) for r in rows}) == 1, "every image of a block holds the same count"
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    return [as_index(context)], [as_index(t) for t in targets]
