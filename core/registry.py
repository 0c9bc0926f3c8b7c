"""The component registry: every offered component by (kind, name), and the plugins that offered them.

Most components are offered one by one. A plugin that passes a large upstream catalogue through (every
timm model) offers it as a ``LazyComponents`` namespace instead: the registry asks the namespace for
its names only when a lookup or a listing reaches into it, and builds only the components asked for.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, replace
from typing import Iterable

from clrun.component import KINDS, Component, LazyComponents
from clrun.errors import ComponentError


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name (entry-point name or module path), distribution and version.

    ``components`` counts the components it offered one by one; ``namespaces`` names the lazy
    namespaces it offered (``"backbone timm/*"``), whose names are counted only when resolved.
    """

    name: str
    dist: str
    version: str
    components: int = 0
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to load; it is skipped, and shown by ``cl-run plugins``."""

    name: str
    dist: str
    version: str
    error: str
    traceback: str = ""  # the failure's traceback, for `cl-run plugins -v`


class DuplicateComponentError(ComponentError):
    pass


class UnknownComponentError(ComponentError):
    pass


Offer = Component | LazyComponents  # what a clrun_components() hook may return


class Registry:
    """Components by kind and name. Filled by ``clrun.plugin_manager``; read by recipes and the CLI."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Component] = {}
        self._lazy: dict[tuple[str, str], LazyComponents] = {}  # (kind, namespace)
        self._lazy_names: dict[tuple[str, str], frozenset[str]] = {}  # (kind, namespace) -> full names, once resolved
        self.plugins: list[PluginInfo] = []
        self.broken: list[BrokenPlugin] = []
        self.autoload = True  # whether entry-point plugins were loaded (False: built-ins only)
        self.disabled: list[str] = []  # entry-point plugins left out by --disable-plugin

    # -- filling ----------------------------------------------------------------------------------
    def add(self, component: Offer, provider: str) -> None:
        self.add_all([component], provider)

    def add_all(self, offers: Iterable[Offer], provider: str) -> int:
        """Add a plugin's components and lazy namespaces all or nothing, so a failing plugin leaves no
        half of itself behind. Returns how many single components were added."""
        offers = list(offers)
        seen: dict[tuple[str, str], str] = {}
        seen_lazy: dict[tuple[str, str], str] = {}
        for offer in offers:
            if isinstance(offer, LazyComponents):
                self._check_namespace(offer, provider, seen, seen_lazy)
                seen_lazy[(offer.kind, offer.namespace)] = provider
            elif isinstance(offer, Component):
                self._check_component(offer, provider, seen, seen_lazy)
                seen[(offer.kind, offer.name)] = provider
            else:
                raise ComponentError(f"{provider}: clrun_components() must return clrun.Component or "
                                     f"clrun.LazyComponents objects, got {offer!r}")
        for offer in offers:
            if isinstance(offer, LazyComponents):
                self._lazy[(offer.kind, offer.namespace)] = replace(offer, provider=provider)
            else:
                self._components[(offer.kind, offer.name)] = offer.with_provider(provider)
        return len(seen)

    def _check_component(self, c: Component, provider: str, seen: dict, seen_lazy: dict) -> None:
        key = (c.kind, c.name)
        first = self._components[key].provider if key in self._components else seen.get(key)
        if first is not None:
            raise DuplicateComponentError(
                f"{c.kind} {c.name!r} is offered twice: by {first} and by {provider}; "
                f"uninstall one of them (a plugin's names belong in its own namespace)"
            )
        namespace = (c.kind, c.name.split("/", 1)[0])
        owner = self._lazy[namespace].provider if namespace in self._lazy else seen_lazy.get(namespace)
        if owner is not None:
            raise DuplicateComponentError(
                f"{c.kind} {c.name!r} is offered twice: by {provider}, and by {owner}, which offers every "
                f"{c.kind} named {namespace[1]}/*; uninstall one of them (a plugin's names belong in its own namespace)"
            )

    def _check_namespace(self, lazy: LazyComponents, provider: str, seen: dict, seen_lazy: dict) -> None:
        key = (lazy.kind, lazy.namespace)
        first = self._lazy[key].provider if key in self._lazy else seen_lazy.get(key)
        if first is not None:
            raise DuplicateComponentError(
                f"every {lazy.kind} named {lazy.pattern!r} is offered twice: by {first} and by {provider}; "
                f"uninstall one of them (a plugin's names belong in its own namespace)"
            )
        offered = {**{key: c.provider for key, c in self._components.items()}, **seen}
        taken = [(name, owner) for (kind, name), owner in offered.items()
                 if kind == lazy.kind and name.startswith(lazy.namespace + "/")]
        if taken:
            name, owner = taken[0]
            raise DuplicateComponentError(
                f"{lazy.kind} {name!r} is offered twice: by {owner}, and by {provider}, which offers every "
                f"{lazy.kind} named {lazy.pattern}; uninstall one of them (a plugin's names belong in its own namespace)"
            )

    # -- looking up -------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``; a name in a lazy namespace is resolved here, on first use."""
        found = self._find(kind, name)
        if found is None:
            raise UnknownComponentError(self.unknown_message(kind, name))
        return found

    def has(self, kind: str, name: str) -> bool:
        """Whether ``name`` is a component of ``kind`` (resolving its lazy namespace, if it has one)."""
        return self._find(kind, name) is not None

    def _find(self, kind: str, name: str) -> Component | None:
        found = self._components.get((kind, name))
        if found is not None:
            return found
        lazy = self._lazy.get((kind, name.split("/", 1)[0]))
        if lazy is None or name not in self._names_in(lazy):
            return None
        component = self._resolve(lazy, name)
        self._components[(kind, name)] = component
        return component

    def _names_in(self, lazy: LazyComponents) -> frozenset[str]:
        key = (lazy.kind, lazy.namespace)
        if key not in self._lazy_names:
            try:
                names = frozenset(f"{lazy.namespace}/{n}" for n in lazy.names())
            except Exception as exc:  # the upstream library failed to import, or its listing failed
                raise ComponentError(f"the {lazy.kind} namespace {lazy.pattern!r} of {lazy.provider} cannot list its "
                                     f"names: {type(exc).__name__}: {exc}") from exc
            self._lazy_names[key] = names
        return self._lazy_names[key]

    def _resolve(self, lazy: LazyComponents, name: str) -> Component:
        try:
            component = lazy.component(name.split("/", 1)[1])
        except Exception as exc:
            raise ComponentError(f"{lazy.kind} {name!r} of {lazy.provider} cannot be created: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(component, Component) or (component.kind, component.name) != (lazy.kind, name):
            raise ComponentError(f"{lazy.provider}: its {lazy.pattern} namespace must give a clrun.Component of kind "
                                 f"{lazy.kind!r} named {name!r}, got {component!r}")
        return component.with_provider(lazy.provider)

    def names(self, kind: str) -> list[str]:
        """Every name of ``kind``, lazy namespaces resolved."""
        lazy_names = [n for lazy in self.namespaces(kind) for n in self._names_in(lazy)]
        return sorted({n for (k, n) in self._components if k == kind}.union(lazy_names))

    def namespaces(self, kind: str | None = None) -> list[LazyComponents]:
        """The lazy namespaces offered, optionally of one kind, sorted by kind and namespace."""
        found = [lazy for (k, _), lazy in self._lazy.items() if kind is None or k == kind]
        return sorted(found, key=lambda lazy: (KINDS.index(lazy.kind), lazy.namespace))

    def unknown_message(self, kind: str, name: str) -> str:
        if kind not in KINDS:
            return f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}"
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, self.names(kind), n=3, cutoff=0.6)
        if close:
            message += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        else:
            message += f"; list them with `cl-run components {kind}`"
        namespace = name.split("/", 1)[0]
        if namespace in self.disabled:
            message += f" (plugin {namespace!r} is disabled by --disable-plugin)"
        elif not self.autoload and namespace not in {c.name.split("/", 1)[0] for c in self.list(kind, expand_lazy=False)}:
            message += " (installed plugins are off: --no-plugins or CLRUN_DISABLE_PLUGIN_AUTOLOAD; only built-ins are loaded)"
        for b in self.broken:
            if b.name == namespace or b.name.split(".")[0] == namespace:
                message += f" (note: plugin {b.name!r} from {b.dist} {b.version}, which may own {namespace + '/'!r}, failed to load: {b.error})"
        return message

    def list(self, kind: str | None = None, pattern: str | None = None, expand_lazy: bool = True) -> list[Component]:
        """Components sorted by kind and name, filtered by kind and an fnmatch pattern on the name.

        The lazy namespaces the pattern can reach are resolved and their matching names listed; with
        ``expand_lazy=False`` their names are left out instead (``namespaces()`` lists the namespaces).
        """
        if expand_lazy:
            for lazy in self.namespaces(kind):
                if _may_match(pattern, lazy.namespace):
                    for name in fnmatch.filter(self._names_in(lazy), pattern or "*"):
                        self._find(lazy.kind, name)
        out = [
            c
            for (k, n), c in self._components.items()
            if (kind is None or k == kind) and (pattern is None or fnmatch.fnmatch(n, pattern))
            and (expand_lazy or (k, n.split("/", 1)[0]) not in self._lazy)
        ]
        return sorted(out, key=lambda c: (KINDS.index(c.kind), c.name))


def _may_match(pattern: str | None, namespace: str) -> bool:
    """Whether an fnmatch pattern can match a name in ``namespace/`` (decided on its literal prefix,
    so ``clrun/*`` never resolves ``timm/``)."""
    if pattern is None:
        return True
    prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return (namespace + "/").startswith(prefix) or prefix.startswith(namespace + "/")
