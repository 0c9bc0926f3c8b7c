"""Embedding a labeled data set for evaluation (``Run.features``): what is kept, in which dtype, how.

At ImageNet scale what the evaluators keep is the cost: 1.28M images x a 65,536-wide prototype head in fp32
is 335 GB. So:

* **The backbone's features always; the projector's outputs only where the projector is narrow**
  (``NARROW_PROJECTOR``) or an evaluator asks for them. The backbone is the product; a wide head (65,536
  or 8,192 prototypes) is scaffolding whose outputs would cost more than the backbone's.
* **Stored in half precision on an accelerator, fp32 on the CPU** (``storage_dtype``): bf16 halves the bank
  and is what the accelerator embeds in anyway (under autocast); on the CPU bf16 arithmetic is emulated
  and slow, and fp32 keeps the evaluations exact (a test compares them with the whole-matrix kNN).
* **Preallocated** buffers on the CPU, filled batch by batch: no ``torch.cat`` doubling the bank at the end.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clrun.errors import DataError

# The widest projector whose outputs are embedded beside the backbone's by default: the feature width of a
# large convolutional backbone (2048). Up to it, embedding the projector at most doubles such a run's bank
# (2048 x 2 B x 1.28M = 5 GB in bf16), and every contrastive recipe's small head (128 to 2048 wide) keeps
# its ``_projector`` metrics; prototype heads of 4,096 to 65,536 outputs are not embedded unless an
# evaluator asks (``projector: true``). docs/guides/evaluation.md names the recipes on each side.
NARROW_PROJECTOR = 2048

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DtypeName = Union[str, torch.dtype, None]


class Embedded(NamedTuple):
    """A data set's embedding, in data set order, on the CPU: ``features`` (N, feature_dim) of the backbone;
    ``projections`` (N, projection_dim) of the projector, or None where it was not embedded (a wide
    projector, see ``NARROW_PROJECTOR``); ``labels`` (N,) int64. A tuple: ``f, p, y = run.features(...)``."""

    features: Tensor
    projections: Optional[Tensor]
    labels: Tensor


def projector_is_narrow(width: int) -> bool:
    """Whether a projector ``width`` wide is embedded by default (``NARROW_PROJECTOR``)."""
    return width <= NARROW_PROJECTOR


def wants_projector(asked: Union[bool, str, None], width: int) -> bool:
    """Whether to embed the projector: ``asked`` true or false decides; None or "auto" follows the width."""
    if asked is None or asked == "auto":
        return projector_is_narrow(width)
    return bool(asked)


def storage_dtype(device: torch.device, dtype: DtypeName = None) -> torch.dtype:
    """The dtype features are kept in: ``dtype`` ("fp32", "bf16", "fp16" or a torch dtype) when given;
    otherwise fp32 for a run on the CPU, bf16 on an accelerator."""
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"features are kept in fp32, bf16 or fp16, not {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"features are kept in one of {', '.join(DTYPES)} (or auto), not {dtype!r}")
    return DTYPES[dtype]


@torch.no_grad()
def embed(network: torch.nn.Module, preprocess: Callable[[Tensor], Tensor], dataset: Dataset, *, device: torch.device,
          batch_size: int = 512, num_workers: int = 0, projector: bool = False,
          dtype: torch.dtype = torch.float32) -> Embedded:
    """``dataset`` through ``network``'s backbone (and projector, if ``projector``) in eval mode, kept on the
    CPU in ``dtype``. On an accelerator the forward runs under autocast in ``dtype`` when that is a half
    precision (the features are rounded to it anyway); fp32 features are computed in fp32."""
    n = len(dataset)
    was_training = network.training
    network.eval()
    # A private generator: a DataLoader draws its base seed from the global one even without shuffling,
    # and an evaluation in mid-training must not change the training's augmentations.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator(), pin_memory=device.type == "cuda")
    half = dtype != torch.float32 and device.type != "cpu"  # the CPU emulates bf16: compute in fp32 there
    feats = projs = None
    labels = torch.empty(n, dtype=torch.long)
    done = 0
    try:
        for images, y, *_ in loader:  # a letterboxing data set adds places: the canvas is evaluated whole
            y = torch.as_tensor(y)
            if y.ndim != 1:  # before the forward: a segmentation set's images may not even fit the network
                raise DataError(
                    f"{type(dataset).__name__} gives labels of shape {tuple(y.shape[1:])} per image (label maps, a "
                    f"segmentation data set), but this evaluation needs one class per image; score dense "
                    f"features with clrun/linear_segmentation or clrun/patch_knn, or give it an image "
                    f"classification data set")
            with torch.autocast(device.type, dtype=dtype, enabled=half):
                f = network.backbone(preprocess(images))
                p = network.projector(f) if projector else None
            if feats is None:  # the widths are known once the first batch is through
                feats = torch.empty(n, f.shape[1], dtype=dtype)
                projs = torch.empty(n, p.shape[1], dtype=dtype) if p is not None else None
            end = done + len(f)
            feats[done:end].copy_(f)  # converts to the storage dtype on the way (no fp32 copy on the host)
            if projs is not None:
                projs[done:end].copy_(p)
            labels[done:end] = y
            done = end
    finally:
        network.train(was_training)
    if feats is None:  # an empty data set: no batch told the widths
        feats = torch.empty(0, 0, dtype=dtype)
        projs = torch.empty(0, 0, dtype=dtype) if projector else None
    return Embedded(feats[:done], None if projs is None else projs[:done], labels[:done])
