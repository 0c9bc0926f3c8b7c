"""Augmentations: every 2D ``kornia.augmentation`` op as ``kornia/<OpName>``, run batched on the device.

Ops take float (B, C, H, W) images in [0, 1]. Notes from kornia 0.9 that recipes should know:
``ColorJitter`` has torchvision/SimCLR semantics (``ColorJiggle`` differs); ``RandomGrayscale``
defaults to p=0.1 (SimCLR uses 0.2); ``RandomSolarize(thresholds=x)`` draws its threshold from 0.5±x.

The ops are offered as a lazy namespace: kornia (and torch) is imported only when a recipe or a
listing pattern reaches into ``kornia/``, so listing components and plugins stays fast.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect

from clrun import Component, ComponentError, LazyComponents, hookimpl

# Ops that need an optional package (and a model from a hub): without it they are refused when built,
# with the fix. Left to kornia, 0.8 asks on stdin whether to pip-install it (a hang in a batch job) and
# 0.9 raises from deep inside its lazy loader.
NEEDS_PACKAGE = {"RandomDissolving": ("diffusers", "a Stable Diffusion model from the Hugging Face hub")}

# Ops built as a cl-run subclass of kornia's class under kornia's name: the same arguments, draws and pixels,
# made without a host sync or a per-image Python loop on a GPU (the subclass's module says how).
SUBCLASSED = {"RandomResizedCrop": "clrun.plugins.augmentations.kornia_crop:RandomResizedCrop"}


@functools.cache
def kornia_ops() -> dict[str, type]:
    """Concrete 2D kornia.augmentation ops by name."""
    # Imported here, not at the top: only a lookup in kornia/ pays for importing kornia and torch.
    import kornia.augmentation as K
    from torch import nn

    # Mix ops (CutMix, MixUp, Mosaic...) need labels and mix images across the batch: not view augmentations.
    excluded_bases = tuple(getattr(K, n) for n in ("MixAugmentationBaseV2", "AugmentationBase3D") if hasattr(K, n))
    ops = {}
    for name in dir(K):
        cls = getattr(K, name)
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)) or name.endswith(("3D", "Sequential")):
            continue
        if "Base" in name or "Dispather" in name or issubclass(cls, excluded_bases):
            continue
        ops[name] = cls
    return ops


def kornia_op_names() -> list[str]:
    return list(kornia_ops())


def kornia_op(name: str) -> Component:
    """The augmentation component ``kornia/<name>``."""
    cls = kornia_ops()[name]
    package, needs = NEEDS_PACKAGE.get(name, (None, ""))
    if package is not None and importlib.util.find_spec(package) is None:
        return Component("augmentation", f"kornia/{name}", functools.partial(_refused, name, package, needs),
                         _summary(cls))
    return Component("augmentation", f"kornia/{name}", SUBCLASSED.get(name, cls), _summary(cls))


def _refused(name: str, package: str, needs: str, **settings: object) -> None:
    raise ComponentError(f"kornia/{name} needs the optional package {package!r}, not installed here, and {needs}; "
                         f"install it (pip install {package}) where the model can be downloaded, or remove the op")


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.splitlines()[0] if doc else f"kornia.augmentation.{cls.__name__}"


@hookimpl
def clrun_components() -> list[LazyComponents]:
    return [LazyComponents("augmentation", "kornia", kornia_op_names, kornia_op,
                           "any 2D kornia.augmentation op, on float (B, C, H, W) batches in [0, 1]"),
            Component("augmentation", "clrun/random_resized_crop", "clrun.plugins.augmentations.random_resized_crop:RandomResizedCrop",
                      "RandomResizedCrop inside each image's place (clrun/image_folder keep_aspect: crops from whole images)")]
