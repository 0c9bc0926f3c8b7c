"""What the iBOT parity run adds to DINO's inputs: the masks (bit-packed) and the student's mask token.

Views and weights are DINO's (``views.make_spec(0)``: 2 global crops of 28 px and 2 local ones of 14 px per image;
``weights.initial_weights(0)``: the tiny timm-named ViT and a DINO head of 64 prototypes), because iBOT's training
script is DINO's with masked patch distillation added. iBOT adds two things:

* **masks**, one per image and global crop over its 4 x 4 patch grid (28 px, 7 px patches), drawn by the official
  ``loader.ImageFolderMask`` in ``make_ibot.py`` (its own code, Python's ``random`` seeded) and stored in the
  fixture bit-packed: per step, one hex string of the bits of ``(crop, image, row, column)`` in that order,
  most significant bit first (2 x 8 x 16 = 256 bits, 64 hex digits). ``pack``/``unpack`` convert;
* the student's ``masked_embed`` (``backbone.masked_embed``, ``(1, 64)``): official initialization is zeros; here
  it is drawn (a normal of std 0.02 clipped at +-2 std, by NumPy's generator with a seed of its own, as
  ``weights.py`` draws the rest) so that the masked views' outputs depend on it from the first step and a wrong
  mapping of it would show.

The official student head has patch prototypes of its own (``head.last_layer2``) unless ``--shared_head true``;
``official_student_state`` gives them the class prototypes' initial values (``shared_head`` false: a copy; true:
the same module, loaded twice).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.parity import views as V  # noqa: E402
from tests.parity import weights as W  # noqa: E402

GRID = W.IMG // W.PATCH  # 4 x 4 patches on a global crop
PATCHES = GRID * GRID
MASK_SEED = 0
MASKED_EMBED_SEED = 1000  # a generator of its own: not the head's (weights.initial_weights draws it with seed 0)


# ------------------------------------------------------------------------------------------------------ masks
def pack(masks: np.ndarray) -> list[str]:
    """``(steps, crops, batch, GRID, GRID)`` bool -> one hex string per step (the module docstring's order)."""
    masks = np.asarray(masks, dtype=bool)
    return [np.packbits(step.reshape(-1)).tobytes().hex() for step in masks]


def unpack(packed: list[str], crops: int = V.GLOBAL_CROPS, batch: int = V.BATCH) -> np.ndarray:
    """Inverse of ``pack``: ``(steps, crops, batch, GRID, GRID)`` bool."""
    bits = [np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8))[: crops * batch * PATCHES] for h in packed]
    return np.stack(bits).astype(bool).reshape(len(packed), crops, batch, GRID, GRID)


# ---------------------------------------------------------------------------------------------------- weights
def masked_embed(seed: int = MASKED_EMBED_SEED) -> torch.Tensor:
    """The student's initial mask token, ``(1, EMBED)`` float64: a normal of std 0.02 clipped at +-2 std, drawn by
    NumPy as ``weights.initial_weights`` draws the other weights (the same on every machine)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.clip(rng.standard_normal((1, W.EMBED)), -2.0, 2.0) * 0.02)


def initial_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """``weights.initial_weights(seed)`` (``backbone.<timm name>``, ``head.<DINOHead name>``) and the student's
    ``backbone.masked_embed``: the official student's names, float64."""
    weights = W.initial_weights(seed)
    weights["backbone.masked_embed"] = masked_embed()
    return weights


def official_student_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``initial_weights`` as the official student's ``utils.MultiCropWrapper(VisionTransformer, iBOTHead)``
    state dict: the patch prototypes ``head.last_layer2.*`` start as the class prototypes (a shared head lists
    them under both names; separate ones are then equal until the last layer is released)."""
    state = {name: tensor.clone() for name, tensor in weights.items()}
    for name in ("weight_g", "weight_v"):
        state[f"head.last_layer2.{name}"] = weights[f"head.last_layer.{name}"].clone()
    return state


def official_checkpoint(weights: dict[str, torch.Tensor]) -> dict:
    """The initial state as the official ``checkpoint.pth`` holds it (main_ibot.py: ``{"student", "teacher",
    "ibot_loss", ...}``; the student DDP-wrapped, ``module.``): what cl-run's ``clrun/ibot`` weights layout
    reads. The teacher is the student without its mask token (``load_state_dict(..., strict=False)``); the
    centers are zero."""
    student = official_student_state(weights)
    teacher = {k: v.clone() for k, v in student.items() if k != "backbone.masked_embed"}
    return {
        "student": {f"module.{k}": v for k, v in student.items()},
        "teacher": teacher,
        "ibot_loss": {"center": torch.zeros(1, W.OUT_DIM, dtype=torch.float64),
                      "center2": torch.zeros(1, 1, W.OUT_DIM, dtype=torch.float64)},
        "epoch": 0,
    }
