"""The MAE parity run's inputs from seeds: one view per image (``views.py``'s crop spec) and the masking noise.

Views: MAE's training transform (main_pretrain.py) is ``RandomResizedCrop(input_size, scale=(0.2, 1.0))`` and
``RandomHorizontalFlip`` (then ``ToTensor``, ``Normalize``). Here, as for DINO: ``views.make_spec`` with one
"global" crop of 28 px, scale (0.2, 1), and no local crop draws each step's 8 Fashion-MNIST indices, one box
and one flip per image; ``views.render`` makes them (bilinear, no antialiasing; mean 0.286, std 0.353; 1
channel). (The official crop is bicubic from a PIL image; once the pixels are given, this is outside the
comparison.)

Masks: ``models_mae.MaskedAutoencoderViT.random_masking`` draws ``noise = torch.rand(N, L)`` and keeps the
``int(L * (1 - mask_ratio))`` patches of smallest noise, in ascending order of noise. Here the noise of step s,
image n, patch l is the ``((s * BATCH) + n) * L + l``-th ``random()`` of Python's ``random.Random(seed)``
(a float64 in [0, 1); the stream is stable across Python, torch and numpy versions). ``make_mae.py`` hands it
to the official ``random_masking`` in place of ``torch.rand``; a reimplementation hands it to its own masking,
or uses ``keep_order``.

    spec = make_spec(0); images, _ = views.load_train_images()
    x = render(spec, step, images)                 # (8, 1, 28, 28) float64
    noise = mask_noise(0)[step]                    # (8, 49) float64
    ids_keep = keep_order(noise, 0.75)             # (8, 12) int64: the kept patches, in the encoder's order
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.parity import views as V  # noqa: E402

STEPS, BATCH = V.STEPS, V.BATCH  # 30 steps of 8 images
SIZE, SCALE = 28, (0.2, 1.0)
NUM_PATCHES = 49  # 7 x 7 patches of 4 px
MASK_RATIO = 0.75


def make_spec(seed: int) -> dict:
    """``views.make_spec`` with one 28 px crop of scale (0.2, 1) per image (boxes (30, 8, 1, 4), flip (30, 8, 1))."""
    assert V.GLOBAL_SIZE == SIZE
    return V.make_spec(seed, global_crops=1, local_crops=0, global_scale=SCALE)


def render(spec: dict, step: int, images: torch.Tensor) -> torch.Tensor:
    """The batch of one step: (8, 1, 28, 28) float64."""
    return V.render(spec, step, images)[0]


def mask_noise(seed: int, steps: int = STEPS, batch: int = BATCH, length: int = NUM_PATCHES) -> np.ndarray:
    """(steps, batch, length) float64: the ``torch.rand(N, L)`` of ``random_masking`` at each step."""
    rng = random.Random(seed)
    return np.array([rng.random() for _ in range(steps * batch * length)], dtype=np.float64).reshape(
        steps, batch, length)


def len_keep(length: int = NUM_PATCHES, mask_ratio: float = MASK_RATIO) -> int:
    """The official ``int(L * (1 - mask_ratio))``: 12 of 49 (37 masked, 75.5 %)."""
    return int(length * (1 - mask_ratio))


def keep_order(noise, mask_ratio: float = MASK_RATIO) -> torch.Tensor:
    """(N, len_keep) int64: ``argsort(noise)[:, :len_keep]``, the patches the encoder sees, in its order."""
    noise = torch.as_tensor(noise, dtype=torch.float64)
    return torch.argsort(noise, dim=1)[:, :len_keep(noise.shape[1], mask_ratio)]
