"""What a plugin offers: a named factory of one kind, and the marker for nested components."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

# The kinds a recipe can select. Each has a fixed role in the training loop (see clrun.training.loop).
KINDS: tuple[str, ...] = (
    "dataset",
    "augmentation",
    "backbone",
    "projector",
    "predictor",
    "loss",
    "optimizer",
    "scheduler",
    "callback",
)

# Arguments the training loop supplies itself, per kind: a recipe must not set them, and a factory
# that declares them receives them. They are how a component learns about the rest of the run
# (a head's input width, the parameters an optimizer updates, the length of a schedule).
INJECTED: dict[str, tuple[str, ...]] = {
    "projector": ("in_dim",),  # the backbone's feature width
    "predictor": ("in_dim",),  # the projector's output width
    "loss": ("in_dim",),  # the projector's output width: sizes a loss's queue or prototypes
    "optimizer": ("params",),
    "scheduler": ("optimizer", "total_steps", "steps_per_epoch"),
}

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class Component:
    """A named factory a plugin offers through the ``clrun_components`` hook.

    kind:    one of ``clrun.KINDS``.
    name:    ``"namespace/name"``; a plugin's names live in its own namespace
             (built-ins own ``clrun/``; ``timm/``, ``kornia/`` and ``torch/`` pass upstream names through).
    factory: a callable whose keyword arguments are the recipe keys; its signature and type hints are
             the schema a recipe entry is validated against.
    summary: one line shown by ``cl-run components``.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    summary: str = ""
    # Filled in by the plugin manager: which plugin/distribution offered this component.
    provider: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Component {self.name!r}: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not _NAME.match(self.name):
            raise ValueError(f"Component name {self.name!r} must look like 'namespace/name' (letters, digits, '_', '-', '.')")
        if not callable(self.factory):
            raise ValueError(f"Component {self.name!r}: factory must be callable, got {type(self.factory).__name__}")


@dataclass(frozen=True)
class Nested:
    """Type-hint marker for a factory argument that is itself a component entry of ``kind``.

    Use it as ``Annotated[Dataset, clrun.Nested("dataset")]``: the recipe then gives a mapping with
    ``name`` and that component's own keys, validated like a top-level entry and built before the call.
    ``many=True`` accepts a list of such entries and passes a list.
    """

    kind: str
    many: bool = False
