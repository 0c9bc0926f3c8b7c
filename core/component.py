"""What a plugin offers: a named factory of one kind, a namespace of them resolved on first use, and the
marker for nested components."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from clrun.errors import ComponentError

KINDS: tuple[str, ...] = (
    "dataset",
    "augmentation",
    "mask",
    "backbone",
    "projector",
    "predictor",
    "token_head",
    "loss",
    "optimizer",
    "scheduler",
    "callback",
    "weights_layout",
)
"""The kinds a recipe can select. Each has a fixed role in the training loop (see ``clrun.training.loop``)."""

INJECTED: dict[str, tuple[str, ...]] = {
    "projector": ("in_dim",),  # the backbone's feature width
    "predictor": ("in_dim",),  # the projector's output width
    # The backbone's token width, and the values per patch of a global view (channels x patch pixels).
    "token_head": ("token_dim", "patch_pixels"),
    "loss": ("in_dim",),  # the projector's output width: sizes a loss's queue or prototypes
    "optimizer": ("params",),
    "scheduler": ("optimizer", "total_steps", "steps_per_epoch"),
}
"""Arguments the training loop supplies itself, per kind: a recipe must not set them, and a factory
that declares them receives them. They are how a component learns about the rest of the run (a head's
input width, the parameters an optimizer updates, the length of a schedule)."""

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+$")


_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]+$")
# "package.module:Attribute", the form of an entry point's object reference.
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


@dataclass(frozen=True, init=False)
class Component:
    """A named factory a plugin offers through the ``clrun_components`` hook.

    kind:    one of ``clrun.KINDS``.
    name:    ``"namespace/name"``; a plugin's names live in its own namespace
             (built-ins own ``clrun/``; ``timm/``, ``kornia/`` and ``torch/`` pass upstream names through).
    factory: a callable whose keyword arguments are the recipe keys; its signature and type hints are
             the schema a recipe entry is validated against. It may be given as its import path,
             ``"package.module:Name"``: the module is then imported on first use of ``.factory``, so
             listing components (``cl-run components``, ``cl-run plugins``) never imports it (nor torch).
    summary: one line shown by ``cl-run components``.
    """

    kind: str
    name: str
    source: Callable[..., Any] | str  # the factory as offered: the callable itself or its import path
    summary: str = ""
    # Filled in by the plugin manager: which plugin/distribution offered this component.
    provider: str = field(default="", compare=False)

    def __init__(self, kind: str, name: str, factory: Callable[..., Any] | str, summary: str = "",
                 provider: str = "") -> None:
        for attribute, value in (("kind", kind), ("name", name), ("source", factory), ("summary", summary),
                                 ("provider", provider)):
            object.__setattr__(self, attribute, value)
        if kind not in KINDS:
            raise ValueError(f"Component {name!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"Component name {name!r} must look like 'namespace/name' (letters, digits, '_', '-', '.')")
        if isinstance(factory, str):
            if not _IMPORT_PATH.match(factory):
                raise ValueError(f"Component {name!r}: factory {factory!r} must be a callable or an import path "
                                 f"'package.module:Name'")
        elif not callable(factory):
            raise ValueError(f"Component {name!r}: factory must be callable, got {type(factory).__name__}")

    @property
    def factory(self) -> Callable[..., Any]:
        """The factory; one given as an import path is imported here, on first use."""
        if not isinstance(self.source, str):
            return self.source
        module_name, _, attributes = self.source.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for attribute in attributes.split("."):
                target = getattr(target, attribute)
        except Exception as exc:  # any import-time failure of the plugin's code
            provider = f" (offered by {self.provider})" if self.provider else ""
            raise ComponentError(f"{self.kind} {self.name!r}{provider}: its factory {self.source!r} cannot be "
                                 f"imported: {type(exc).__name__}: {exc}") from exc
        if not callable(target):
            raise ComponentError(f"{self.kind} {self.name!r}: its factory {self.source!r} is not callable")
        return target

    def with_provider(self, provider: str) -> "Component":
        """This component, recorded as offered by ``provider``."""
        return Component(self.kind, self.name, self.source, self.summary, provider)


@dataclass(frozen=True)
class LazyComponents:
    """A whole namespace of components of one kind, whose names are resolved on first use.

    For a plugin that passes a large upstream catalogue through (every timm model, every kornia op,
    every torch optimizer): finding those names means importing the upstream library, which every
    ``cl-run`` command would pay for. Offered as a namespace instead, the library is imported only when
    a recipe, ``clrun.create``, ``clrun.components`` or a ``cl-run components`` pattern reaches into it,
    and then only the components asked for are built.

    kind:      the kind of every component in the namespace.
    namespace: the part of the names before "/" (``"timm"`` for ``timm/<model name>``). The plugin owns
               every name of this kind in the namespace: another plugin offering one is a duplicate.
    names:     returns the names in the namespace without the ``"namespace/"`` prefix
               (``timm.list_models``); called once, on first use.
    component: returns the ``Component`` for one of those names (same kind, name ``namespace/<name>``).
    summary:   one line shown for the whole namespace by ``cl-run components`` without a pattern.
    """

    kind: str
    namespace: str
    names: Callable[[], Iterable[str]]
    component: Callable[[str], Component]
    summary: str = ""
    provider: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"LazyComponents {self.namespace!r}: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(self.namespace, str) or not _NAMESPACE.match(self.namespace):
            raise ValueError(f"LazyComponents namespace {self.namespace!r} must be letters, digits, '_', '-' or '.' (no '/')")
        if not callable(self.names) or not callable(self.component):
            raise ValueError(f"LazyComponents {self.namespace!r}: names and component must be callables")

    @property
    def pattern(self) -> str:
        """The fnmatch pattern of every name in the namespace, e.g. ``"timm/*"``."""
        return f"{self.namespace}/*"


@dataclass(frozen=True)
class Nested:
    """Type-hint marker for a factory argument that is itself a component entry of ``kind``.

    Use it as ``Annotated[Dataset, clrun.Nested("dataset")]``: the recipe then gives a mapping with
    ``name`` and that component's own keys, validated like a top-level entry and built before the call.
    ``many=True`` accepts a list of such entries and passes a list.
    """

    kind: str
    many: bool = False
