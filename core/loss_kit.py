"""The loss kit: what every loss needs besides its formula, shared by the built-in losses and open to plugins.

A loss receives a ``clrun.StepOutputs`` and must (1) check that the recipe gave it what it compares,
with an error that names the loss and says how to fix the recipe, and (2) compute its formula in at
least float32 even when the step runs under bf16/fp16 autocast. The helpers here do both, with the
same wording for every loss:

    with loss_kit.autocast_off(z):                 # the loss math in the dtype chosen below
        dtype = loss_kit.compute_dtype(z1, z2)     # float32, or float64 for float64 inputs

    views = loss_kit.global_projections(owner, out, "have negatives")   # >= 2 global views, batch >= 2
    preds = loss_kit.required_predictions(owner, out)                   # the recipe needs a predictor
    keys = loss_kit.required_target_projections(owner, out)             # ... or a target network

A loss declares its constructor's limits in its signature and is decorated with ``clrun.checked``:

    @clrun.checked
    class MyLoss(nn.Module):
        def __init__(self, temperature: Annotated[float, loss_kit.temperature_range("the paper uses 0.5")] = 0.5):

Every check raises ``clrun.ComponentError`` (a ``UserError`` and a ``ValueError``): the CLI prints
its message without a traceback, and a factory's error is reported with the recipe's file and line
(the argument checks name the argument in the error's ``argument``).
``owner`` is the loss itself (``self``: its registered name, ``clrun.name_of``, starts every message) or
that name as a string (``"mine/cosine"``).
Gathering views across ranks is ``clrun.distributed.gather`` (with gradients) and
``gather_no_grad``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from clrun.checked import name_of
from clrun.errors import ComponentError
from clrun.ranges import Range

def _name(owner: Any) -> str:
    """The component name that starts a message: ``owner`` itself when a string, else its registered name."""
    return owner if isinstance(owner, str) else name_of(owner)


# ---------------------------------------------------------------- precision


def autocast_off(where: Tensor | torch.device | str) -> contextlib.AbstractContextManager:
    """A context that disables autocast on the device of ``where`` (a tensor, a device or a device type).

    Under bf16/fp16 autocast a matmul or a softmax would run in half precision; a loss's logits,
    normalizations and sums need float32 (cast the inputs with ``compute_dtype``). On a device type
    without autocast support this is a no-op context.
    """
    if isinstance(where, Tensor):
        where = where.device
    device_type = where.type if isinstance(where, torch.device) else str(where)
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def compute_dtype(*tensors: Tensor | Sequence[Tensor]) -> torch.dtype:
    """The dtype a loss computes in: at least float32 (fp16/bf16 inputs are promoted), float64 stays float64.

    Takes tensors or lists of tensors: ``compute_dtype(z1, z2)`` or ``compute_dtype(predictions, targets)``.
    """
    dtype = torch.float32
    for item in tensors:
        for t in [item] if isinstance(item, Tensor) else item:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ---------------------------------------------------------------- what the recipe must provide


def global_view_indices(owner: Any, out: Any, *, minimum: int = 2, exactly: int | None = None, why: str = "") -> list[int]:
    """Indices (in ``out``'s per-view lists) of the global views, after checking how many there are.

    ``exactly``: the loss compares exactly that many global views; else at least ``minimum``. ``why``
    completes "needs at least N global views (...)" in the message; without it the message says
    "compares at least N global views".
    """
    indices = [i for i, g in enumerate(out.is_global) if g]
    n = len(indices)
    if exactly is not None and n != exactly:
        raise ComponentError(
            f"{_name(owner)} compares exactly {exactly} global views; the recipe makes {n}. Use views with count "
            f"{exactly} ({exactly} global crops of every image), or a loss that handles another number of views."
        )
    if n < minimum:
        what = f"needs at least {minimum} global views ({why})" if why else f"compares at least {minimum} global views"
        raise ComponentError(
            f"{_name(owner)} {what}; the recipe makes {n}. "
            f"Use a global view section with count {minimum} (a section without `local: true`)."
        )
    return indices


def required_predictions(owner: Any, out: Any) -> list[Tensor]:
    """The predictor's outputs, one per view; an error that asks for a ``predictor:`` section when there are none."""
    predictions = getattr(out, "predictions", None)
    if predictions is None:
        raise ComponentError(
            f"{_name(owner)} needs a predictor head on the online branch: add a `predictor:` section to the recipe "
            "(e.g. name: clrun/mlp)"
        )
    views = len(out.is_global)
    if len(predictions) != views:
        raise ComponentError(f"{_name(owner)} got {len(predictions)} predictions for {views} views; it needs one per view")
    return list(predictions)


def required_target_projections(owner: Any, out: Any) -> list[Tensor]:
    """The momentum target network's projections, one per global view; an error that asks for a
    ``target:`` section when the recipe has no target network."""
    targets = getattr(out, "target_projections", None)
    if targets is None:
        raise ComponentError(
            f"{_name(owner)} needs a momentum target network: add a `target:` section to the recipe (e.g. momentum: 0.99)"
        )
    n_global = sum(1 for g in out.is_global if g)
    if len(targets) != n_global:
        raise ComponentError(
            f"{_name(owner)} got {len(targets)} target projections for {n_global} global views; it needs one per global view"
        )
    return list(targets)


def required_token_predictions(owner: Any, out: Any, example: str) -> list[tuple[int, Tensor]]:
    """``(view index, the token head's predictions)`` for every masked view; an error that asks for a
    ``masking:`` section with a ``head:`` (``example``: a fitting section, e.g. MAE's) when there are none."""
    predictions = getattr(out, "token_predictions", None)
    if predictions is None or all(p is None for p in predictions):
        raise ComponentError(f"{_name(owner)} compares a token head's predictions at the hidden patches of the global views "
                             f"with their targets: the recipe needs a global view, a ViT backbone and a masking: "
                             f"section with a head, e.g. {example}")
    return [(i, p) for i, p in enumerate(predictions) if p is not None]


def global_projections(owner: Any, out: Any, why_two_images: str, *, exactly: int | None = None) -> list[Tensor]:
    """The global views' projections: at least 2 views (``exactly`` that many if given), all ``(batch, dim)``
    tensors of one shape, batch >= 2.

    ``why_two_images`` completes "needs at least 2 images per batch to ..." in the error message.
    """
    views = [out.projections[i] for i in global_view_indices(owner, out, exactly=exactly)]
    n, _ = same_shape(owner, "the global views' projections", views)
    at_least_two_images(owner, n, why_two_images)
    return views


# ---------------------------------------------------------------- shapes and batch size


def same_shape(owner: Any, what: str, tensors: Sequence[Tensor]) -> tuple[int, int]:
    """``(batch, dim)`` of ``tensors``, which must all be 2-d and of one shape; ``what`` names them in the error."""
    shape = tuple(tensors[0].shape)
    if len(shape) != 2 or any(tuple(t.shape) != shape for t in tensors):
        raise ComponentError(
            f"{_name(owner)} needs {what} as (batch, dim) tensors of the same shape; got "
            + ", ".join(str(tuple(t.shape)) for t in tensors)
        )
    return shape[0], shape[1]


def shaped_like_predictions(owner: Any, what: str, tensors: Sequence[Tensor], shape: tuple[int, ...]) -> None:
    """Check that the tensors a loss compares predictions with (``what``) have the predictions' ``shape``."""
    for t in tensors:
        if tuple(t.shape) != tuple(shape):
            raise ComponentError(
                f"{_name(owner)} needs {what} of the predictions' shape {tuple(shape)}; got {tuple(t.shape)}. "
                "The predictor's output width must equal the projector's (out_dim)."
            )


def batch_of_width(owner: Any, what: str, tensors: Sequence[Tensor], width: int) -> int:
    """The batch size of ``tensors``, which must all be ``(batch, width)`` with one batch size >= 1.

    For a loss whose state is sized by ``in_dim`` (a queue, prototypes).
    """
    shapes = [tuple(t.shape) for t in tensors]
    n = shapes[0][0] if len(shapes[0]) == 2 else -1
    if any(s != (n, width) for s in shapes):
        raise ComponentError(
            f"{_name(owner)} needs {what} as (batch, {width}) tensors with the same batch size; got {shapes}"
        )
    if n < 1:
        raise ComponentError(f"{_name(owner)} needs at least 1 image per batch; got an empty batch")
    return n


def at_least_two_images(owner: Any, batch_size: int, why: str) -> None:
    """An error for a batch of one image when the loss needs two (negatives, a variance over the batch).

    ``why`` completes "needs at least 2 images per batch to ...".
    """
    if batch_size < 2:
        raise ComponentError(
            f"{_name(owner)} needs at least 2 images per batch to {why}; got batch size {batch_size}. "
            "Raise the batch size, or drop the last incomplete batch if it is the one with a single image."
        )


# ---------------------------------------------------------------- constructor arguments
# The built-in components declare their limits in their signatures (clrun.Range, clrun.checked). The
# checks below predate that and stay for plugins that call them: each is a Range applied on the spot, so
# they refuse what the declaration refuses, with the same ComponentError and message.


def _within(owner: Any, name: str, value: object, base: type, limits: Range) -> Any:
    problem = limits.violation(value, base)
    if problem:
        raise ComponentError(f"{_name(owner)}: {name} {problem}", argument=name)
    return value


def _hint(text: str) -> str:
    """An old-style hint, ``" (the paper uses 0.5)"``, as a Range's: ``"the paper uses 0.5"``."""
    return text.strip().removeprefix("(").removesuffix(")").strip()


def int_arg(owner: Any, name: str, value: object, minimum: int, hint: str = "") -> int:
    """``value`` as an int >= ``minimum`` (booleans refused); ``hint`` follows the requirement in the error,
    e.g. ``" (the paper uses 65536)"``."""
    return _within(owner, name, value, int, Range(min=minimum, hint=_hint(hint)))


def float_arg(
    owner: Any,
    name: str,
    value: object,
    *,
    minimum: float = 0.0,
    inclusive: bool = False,
    hint: str = "",
    noun: str = "a number",
) -> float:
    """``value`` as a finite float above ``minimum`` (or equal to it when ``inclusive``); booleans, strings,
    NaN and infinities are refused. ``noun`` is accepted for the plugins that pass it; the message says
    "a number", as a Range's does."""
    return float(_within(owner, name, value, float, Range(min=minimum, exclusive_min=not inclusive, hint=_hint(hint))))


MIN_TEMPERATURE = 1e-3
SATURATES = (f"the logits are similarities divided by the temperature, and past +-{1 / MIN_TEMPERATURE:g} the "
             "softmax saturates and the loss explodes instead of training")


def temperature_range(hint: str = "") -> Range:
    """The limits of a softmax temperature, for its annotation: ``Annotated[float, loss_kit.temperature_range(
    "the paper uses 0.5")]``. A number >= ``MIN_TEMPERATURE`` (1e-3): a loss divides similarities in [-1, 1]
    by its temperature, and below 1e-3 the softmax is saturated (one-hot) and the loss grows like
    1 / temperature while the run goes on with finite numbers and learns nothing. Refused in the recipe,
    ``cl-run check`` says so before any training."""
    return Range(min=MIN_TEMPERATURE, hint=hint, why=SATURATES)


@dataclass(frozen=True)
class CollapseSignal:
    """How one of a loss's metrics looks when training collapses; a loss lists them as its class attribute
    ``collapse_signals``, and the health alarm (health.alarm: patience, action) watches each epoch's
    mean of ``metric``: beyond ``threshold`` (above it with ``above``, else below it) for ``patience``
    epochs, it warns or halts. ``meaning`` says what the value means and what to change."""

    metric: str
    threshold: float
    above: bool
    meaning: str

    def beyond(self, value: float) -> bool:
        """Whether ``value`` is on the collapsed side of ``threshold`` (NaN is)."""
        return not (value <= self.threshold if self.above else value >= self.threshold)  # NaN is beyond

    def describe(self, value: float) -> str:
        """``value`` against the threshold, with what it means, for the alarm's message."""
        return f"{self.metric} = {value:.4g} {'>' if self.above else '<'} {self.threshold:g}: {self.meaning}"


def temperature_arg(owner: Any, value: object, hint: str = "", name: str = "temperature") -> float:
    """``value`` as a softmax temperature: what ``temperature_range`` declares (a number >= 1e-3), checked on
    the spot. ``name``: the argument's name, for a loss with several temperatures."""
    return float(_within(owner, name, value, float, temperature_range(_hint(hint))))
