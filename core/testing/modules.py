"""The contracts of the network parts and the augmentations: ``projector``, ``predictor``, ``backbone``
and ``augmentation`` components.

What the training loop relies on: a head maps ``(B, in_dim)`` features to ``(B, width)`` (it measures
the width on an example batch), also for one image in eval mode (the last batch when a data set is
embedded); a backbone maps float ``(B, C, H, W)`` images to pooled ``(B, F)`` features; an
augmentation keeps a float batch a float batch of one size, with new random draws per image, not
one draw for the whole batch (two views of a batch must be augmented independently).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from clrun import create
from clrun.testing.contract import finite, require

HEAD_IN_DIMS = (8, 24)
HEAD_BATCH = 4
IMAGE_SIZE = 16  # augmentations' test images are (B, 3, IMAGE_SIZE, IMAGE_SIZE)
BACKBONE_IMAGE_SIZE = 32
RANDOM_BATCH = 6
RANDOM_CALLS = 2


def _width(kind: str, y: Any, batch: int, situation: str) -> int:
    require(
        isinstance(y, Tensor) and y.ndim == 2 and y.shape[0] == batch,
        f"{situation}: the output is {_describe(y)}; a {kind} must return a ({batch}, width) tensor",
    )
    require(y.dtype == torch.float32, f"{situation}: the output is {y.dtype} for float32 input")
    require(finite(y), f"{situation}: the output has non-finite values")
    return int(y.shape[1])


def _describe(y: Any) -> str:
    return f"a tensor of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__


# ---------------------------------------------------------------- projector, predictor


def head_output_shape(kind: str, name: str, **settings: Any) -> None:
    """``(B, in_dim) -> (B, width)`` for two values of ``in_dim``; ``width`` is the head's ``out_dim`` when it
    declares one, and for a predictor without an ``out_dim`` setting it is ``in_dim`` (the loss compares
    predictions with projections of that width)."""
    for in_dim in HEAD_IN_DIMS:
        head = create(kind, name, in_dim=in_dim, **settings)
        situation = f"with in_dim={in_dim}"
        width = _width(kind, head(torch.randn(HEAD_BATCH, in_dim)), HEAD_BATCH, situation)
        declared = getattr(head, "out_dim", None)
        require(declared is None or width == declared, f"{situation}: the output width is {width}, its out_dim {declared}")
        if kind == "predictor" and "out_dim" not in settings:
            require(
                width == in_dim,
                f"{situation}: the output width is {width}; by default a predictor's output width must be its "
                "in_dim, since the loss compares predictions with the projections",
            )


def head_eval_batch_of_one(kind: str, name: str, **settings: Any) -> None:
    """In eval mode one row gives one row of the training width (the last batch of an embedded data set)."""
    in_dim = HEAD_IN_DIMS[0]
    head = create(kind, name, in_dim=in_dim, **settings)
    width = _width(kind, head(torch.randn(HEAD_BATCH, in_dim)), HEAD_BATCH, "in training mode")
    head.eval()
    with torch.no_grad():
        got = _width(kind, head(torch.randn(1, in_dim)), 1, "in eval mode on 1 row")
    require(got == width, f"in eval mode the output width is {got}, in training mode {width}")


def head_gradients(kind: str, name: str, **settings: Any) -> None:
    """Backward through the head gives the features a finite, non-zero gradient and its parameters finite ones."""
    in_dim = HEAD_IN_DIMS[0]
    head = create(kind, name, in_dim=in_dim, **settings)
    x = torch.randn(HEAD_BATCH, in_dim, requires_grad=True)
    head(x).square().mean().backward()
    require(x.grad is not None and finite(x.grad) and bool(x.grad.abs().sum() > 0),
            "the input features get no finite, non-zero gradient: the backbone would not train")
    for pname, p in head.named_parameters():
        require(p.grad is None or finite(p.grad), f"parameter {pname!r} received a non-finite gradient")


HEAD_CONTRACTS: dict[str, Callable[..., None]] = {
    "output_shape": head_output_shape,
    "eval_batch_of_one": head_eval_batch_of_one,
    "gradients": head_gradients,
}

# ---------------------------------------------------------------- backbone


def _images(batch: int) -> Tensor:
    return torch.rand(batch, 3, BACKBONE_IMAGE_SIZE, BACKBONE_IMAGE_SIZE)


def backbone_pooled_features(kind: str, name: str, **settings: Any) -> None:
    """Float ``(2, 3, 32, 32)`` images give finite pooled ``(2, F)`` float32 features."""
    backbone = create(kind, name, **settings)
    _width(kind, backbone(_images(2)), 2, "on 2 RGB images of 32x32")


def backbone_eval_batch_of_one(kind: str, name: str, **settings: Any) -> None:
    """In eval mode one image gives one feature row of the training width."""
    backbone = create(kind, name, **settings)
    width = _width(kind, backbone(_images(2)), 2, "in training mode")
    backbone.eval()
    with torch.no_grad():
        got = _width(kind, backbone(_images(1)), 1, "in eval mode on 1 image")
    require(got == width, f"in eval mode the feature width is {got}, in training mode {width}")


BACKBONE_CONTRACTS: dict[str, Callable[..., None]] = {
    "pooled_features": backbone_pooled_features,
    "eval_batch_of_one": backbone_eval_batch_of_one,
}

# ---------------------------------------------------------------- augmentation


def augmentation_keeps_the_batch(kind: str, name: str, **settings: Any) -> None:
    """Float ``(B, 3, 16, 16)`` images in [0, 1] give finite float32 ``(B, 3, H, W)`` images, for B = 2 and
    B = 1, with one output size (the input's, unless the op resizes) whatever the batch and the draw."""
    op = create(kind, name, **settings)
    sizes = set()
    for batch in (2, 1):
        x = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE)
        y = op(x)
        situation = f"on a float batch of shape {tuple(x.shape)}"
        require(isinstance(y, Tensor) and y.ndim == 4 and tuple(y.shape[:2]) == (batch, 3),
                f"{situation}: the output is {_describe(y)}; keep the batch and the channels")
        require(y.dtype == x.dtype, f"{situation}: the output is {y.dtype}; keep the input's dtype")
        require(finite(y), f"{situation}: the output has non-finite values")
        sizes.add(tuple(y.shape[2:]))
    require(len(sizes) == 1, f"the output size depends on the batch: {sorted(sizes)}; views must have one size")


def augmentation_random_per_image(kind: str, name: str, **settings: Any) -> None:
    """A random op draws per image: a batch of identical images comes out with differences between images,
    not one draw applied to the whole batch. An op whose output never changes from call to call must
    treat identical images identically."""
    op = create(kind, name, **settings)
    batch = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE).repeat(RANDOM_BATCH, 1, 1, 1)
    outputs = [op(batch.clone()) for _ in range(RANDOM_CALLS)]
    random = any(not torch.equal(outputs[0], y) for y in outputs[1:])
    varies = [any(not torch.equal(y[0], y[i]) for i in range(1, RANDOM_BATCH)) for y in outputs]
    if random:
        require(
            any(varies),
            f"the output changes from call to call, but every call gives all {RANDOM_BATCH} identical images the "
            "same result: one random draw per batch (same_on_batch?). Draw per image: the two views of a batch "
            "must be augmented independently",
        )
    else:
        require(not any(varies), "the output never changes from call to call, yet identical images come out different")


AUGMENTATION_CONTRACTS: dict[str, Callable[..., None]] = {
    "keeps_the_batch": augmentation_keeps_the_batch,
    "random_per_image": augmentation_random_per_image,
}
