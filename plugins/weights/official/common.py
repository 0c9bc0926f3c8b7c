"""What the official checkpoints' layouts share: reading a file's nested dicts as state dicts (prefixes, DDP's
``module.`` wrapper, a script's ``args``) and what a ViT's weights were trained for (``Trained``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

from torch import Tensor

from clrun.weights.layout import Trained, WeightsFile

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
State = dict[str, Tensor]


def as_state(value: Any) -> Optional[State]:
    """``value`` as a state dict (a non-empty mapping of names to tensors), else None."""
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and isinstance(v, Tensor)
                                                    for k, v in value.items()):
        return dict(value)
    return None


def unwrapped(state: State, prefix: str = "module.") -> State:
    """Without DistributedDataParallel's ``module.`` when every name has it."""
    if all(name.startswith(prefix) for name in state):
        return {name[len(prefix):]: value for name, value in state.items()}
    return state


def under(state: State, prefix: str) -> State:
    """The tensors whose names start with ``prefix``, without it."""
    return {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}


def has_prefix(state: Optional[State], prefix: str) -> bool:
    """Whether ``state`` holds a tensor whose name starts with ``prefix``."""
    return bool(state) and any(name.startswith(prefix) for name in state)


def argument(args: Any, name: str) -> Any:
    """An argument of a checkpoint's ``args`` (an ``argparse.Namespace``, or a dict), else None."""
    if isinstance(args, Mapping):
        return args.get(name)
    return getattr(args, name, None)


def check_network(file: WeightsFile, network: str, networks: tuple[str, ...]) -> None:
    """A ``ValueError`` unless ``network`` is one of the ``networks`` the file holds."""
    if network not in networks:
        raise ValueError(f"{file.source}: holds the networks {', '.join(networks)}, not {network!r}")


def vit_geometry(backbone: State, prefix_tokens: int) -> tuple[Optional[int], Optional[int]]:
    """``(image_size, patch_size)`` a ViT's weights were made for: the patch embedding's kernel, and the side
    of the position embeddings' square grid (``prefix_tokens`` of them for class tokens) times it."""
    kernel = backbone.get("patch_embed.proj.weight")
    if kernel is None or kernel.ndim != 4 or kernel.shape[-1] != kernel.shape[-2]:
        return None, None
    patch = int(kernel.shape[-1])
    positions = backbone.get("pos_embed")
    if positions is None or positions.ndim != 3:
        return None, patch
    side = math.isqrt(positions.shape[1] - prefix_tokens)
    if side * side != positions.shape[1] - prefix_tokens:
        return None, patch
    return side * patch, patch


def vit_trained(backbone: State, licence: str, prefix_tokens: int = 1, image_size: Optional[int] = None,
                patch_size: Optional[int] = None) -> Trained:
    """What a ViT backbone's weights were trained for: ImageNet mean and std, the image and patch size its
    embeddings were made for (else the ones given), its register tokens (0 for a ViT without), ``licence``."""
    size, patch = vit_geometry(backbone, prefix_tokens)
    vit = (patch or patch_size) is not None
    registers = backbone.get("register_tokens")
    return Trained(mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size or size, patch_size=patch or patch_size,
                   register_tokens=int(registers.shape[1]) if registers is not None else (0 if vit else None),
                   licence=licence)
