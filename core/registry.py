"""The component registry: every offered component by (kind, name), and the plugins that offered them."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, replace
from typing import Iterable

from clrun.component import KINDS, Component
from clrun.errors import ComponentError


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name (entry-point name or module path), distribution and version."""

    name: str
    dist: str
    version: str
    components: int = 0


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to load; it is skipped, and shown by ``cl-run plugins``."""

    name: str
    dist: str
    version: str
    error: str


class DuplicateComponentError(ComponentError):
    pass


class UnknownComponentError(ComponentError):
    pass


class Registry:
    """Components by kind and name. Filled by ``clrun.plugin_manager``; read by recipes and the CLI."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Component] = {}
        self.plugins: list[PluginInfo] = []
        self.broken: list[BrokenPlugin] = []
        self.autoload = True  # whether entry-point plugins were loaded (False: built-ins only)

    def add(self, component: Component, provider: str) -> None:
        self.add_all([component], provider)

    def add_all(self, components: Iterable[Component], provider: str) -> int:
        """Add a plugin's components all or nothing, so a failing plugin leaves no half of itself behind."""
        components = list(components)
        seen: dict[tuple[str, str], str] = {}
        for c in components:
            if not isinstance(c, Component):
                raise ComponentError(f"{provider}: clrun_components() must return clrun.Component objects, got {c!r}")
            key = (c.kind, c.name)
            first = self._components[key].provider if key in self._components else seen.get(key)
            if first is not None:
                raise DuplicateComponentError(
                    f"{c.kind} {c.name!r} is offered twice: by {first} and by {provider}; "
                    f"uninstall one of them (a plugin's names belong in its own namespace)"
                )
            seen[key] = provider
        for c in components:
            self._components[(c.kind, c.name)] = replace(c, provider=provider)
        return len(components)

    def get(self, kind: str, name: str) -> Component:
        try:
            return self._components[(kind, name)]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(kind, name)) from None

    def names(self, kind: str) -> list[str]:
        return sorted(n for (k, n) in self._components if k == kind)

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
        for b in self.broken:
            if b.name == namespace or b.name.split(".")[0] == namespace:
                message += f" (note: plugin {b.name!r} from {b.dist} {b.version}, which may own {namespace + '/'!r}, failed to load: {b.error})"
        return message

    def list(self, kind: str | None = None, pattern: str | None = None) -> list[Component]:
        """Components sorted by kind and name, filtered by kind and an fnmatch pattern on the name."""
        out = [
            c
            for (k, n), c in self._components.items()
            if (kind is None or k == kind) and (pattern is None or fnmatch.fnmatch(n, pattern))
        ]
        return sorted(out, key=lambda c: (KINDS.index(c.kind), c.name))
