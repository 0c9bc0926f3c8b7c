"""Augmentations: every 2D ``kornia.augmentation`` op as ``kornia/<OpName>``, run batched on the device.

Ops take float (B, C, H, W) images in [0, 1]. Notes from kornia 0.9 that recipes should know:
``ColorJitter`` has torchvision/SimCLR semantics (``ColorJiggle`` differs); ``RandomGrayscale``
defaults to p=0.1 (SimCLR uses 0.2); ``RandomSolarize(thresholds=x)`` draws its threshold from 0.5±x.
"""

from __future__ import annotations

import inspect

import kornia.augmentation as K
from torch import nn

from clrun import Component, hookimpl

# Mix ops (CutMix, MixUp, Mosaic...) need labels and mix images across the batch: not view augmentations.
_EXCLUDED_BASES = tuple(
    getattr(K, n) for n in ("MixAugmentationBaseV2", "AugmentationBase3D") if hasattr(K, n)
)


def kornia_ops() -> dict[str, type]:
    """Concrete 2D kornia.augmentation ops by name."""
    ops = {}
    for name in dir(K):
        cls = getattr(K, name)
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)) or name.endswith(("3D", "Sequential")):
            continue
        if "Base" in name or "Dispather" in name or issubclass(cls, _EXCLUDED_BASES):
            continue
        ops[name] = cls
    return ops


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.splitlines()[0] if doc else f"kornia.augmentation.{cls.__name__}"


@hookimpl
def clrun_components():
    return [Component("augmentation", f"kornia/{name}", cls, _summary(cls)) for name, cls in kornia_ops().items()]
