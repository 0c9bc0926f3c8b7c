"""Loading plugins: the built-ins, then every installed ``clrun`` entry point, into one Registry.

pluggy's own ``load_setuptools_entrypoints`` stops at the first plugin that fails to import, which
would let one broken third-party package make the whole CLI unusable. This loop records a broken
plugin (name, distribution, version, error), warns and goes on; ``strict=True`` makes it fatal.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
import warnings
from typing import Any, Iterable

import pluggy

from clrun.component import LazyComponents
from clrun.errors import PluginLoadError
from clrun.hookspecs import PROJECT, DiscoverySpecs
from clrun.registry import BrokenPlugin, PluginInfo, Registry
from clrun.version import __version__

ENTRY_POINT_GROUP = "clrun"
# Built-ins are named by module path (core never imports plugins): the package lists its modules in
# BUILTIN_MODULES, so they load even with autoload off.
BUILTIN_PACKAGE = "clrun.plugins"

ENV_NO_AUTOLOAD = "CLRUN_DISABLE_PLUGIN_AUTOLOAD"
ENV_STRICT = "CLRUN_STRICT_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin failed to load and was skipped."""


class ClrunPluginManager(pluggy.PluginManager):
    """A pluggy manager that also takes unmarked ``clrun_*`` functions and methods as hook implementations.

    Callback classes then need no decorator, and a misspelled hook name (``clrun_epoch_ends``) is caught
    by ``check_pending()`` instead of being silently never called.
    """

    def __init__(self, specs: type) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(specs)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(PROJECT + "_") and callable(getattr(plugin, name, None)):
            return {}
        return opts


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def load_registry(autoload: bool | None = None, strict: bool | None = None, disabled: Iterable[str] = ()) -> Registry:
    """Build a Registry from the built-in plugins and (unless ``autoload`` is off) installed entry points.

    ``autoload`` defaults to on unless ``CLRUN_DISABLE_PLUGIN_AUTOLOAD`` is set; ``strict`` defaults to
    ``CLRUN_STRICT_PLUGINS``; ``disabled`` names entry-point plugins to leave out (``--disable-plugin``).
    A broken built-in is always fatal: it is a bug in cl-run itself.

    An entry point's name is its namespace: a component another plugin offers under that name is that
    plugin's fault alone (the component is refused, the rest of it loads), and two distributions
    installing one entry-point name are reported, the second one skipped.
    """
    autoload = not _env_flag(ENV_NO_AUTOLOAD) if autoload is None else autoload
    strict = _env_flag(ENV_STRICT) if strict is None else strict
    registry = Registry()
    registry.autoload = autoload
    builtins = importlib.import_module(BUILTIN_PACKAGE)
    for module_name in builtins.BUILTIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginLoadError(f"built-in plugin {module_name} failed to import: {type(exc).__name__}: {exc}") from exc
        error = _register(registry, module, module_name, "cl-run", __version__, owners={})
        if error:
            raise PluginLoadError(f"built-in plugin {module_name} failed to load: {error}")
    if not autoload:
        return registry
    entry_points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    registry.disabled = sorted({ep.name for ep in entry_points} & set(disabled))
    owners: dict[str, str] = {}  # namespace -> the distribution whose entry point has that name
    for ep in entry_points:
        if ep.name in registry.disabled:
            continue
        dist = ep.dist.metadata["Name"] if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if ep.name in owners:
            _broken(registry, BrokenPlugin(ep.name, dist, version, f"the entry point {ep.name!r} is also installed by "
                                           f"{owners[ep.name]}, which was loaded; uninstall one of the two"), strict)
            continue
        owners[ep.name] = f"{dist} {version}"
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # any import-time failure of third-party code
            error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
        else:
            error, trace = _register(registry, plugin, ep.name, dist, version, owners={e.name: e for e in entry_points}), ""
        if error:
            _broken(registry, BrokenPlugin(ep.name, dist, version, error, trace), strict)
    return registry


def _register(registry: Registry, plugin: Any, name: str, dist: str, version: str, owners: dict[str, Any]) -> str | None:
    """Register one plugin object; return an error string instead of raising, so loading goes on.
    A component in a namespace that ``owners`` gives to another plugin is refused with a warning."""
    pm = ClrunPluginManager(DiscoverySpecs)
    try:
        pm.register(plugin, name=name)
        pm.check_pending()  # a misspelled hook name in this plugin
        provider = f"{name} ({dist} {version})"
        count = 0
        namespaces: list[str] = []
        for impl in pm.hook.clrun_components.get_hookimpls():
            offers = [o for o in (impl.function() or ()) if not _foreign(o, name, provider, owners)]
            count += registry.add_all(offers, provider)
            namespaces += [f"{o.kind} {o.pattern}" for o in offers if isinstance(o, LazyComponents)]
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    registry.plugins.append(PluginInfo(name, dist, version, count, tuple(namespaces)))
    return None


def _foreign(offer: Any, plugin: str, provider: str, owners: dict[str, Any]) -> bool:
    """Whether ``offer`` lies in another installed plugin's namespace (warned about, then left out)."""
    name = getattr(offer, "name", None) or getattr(offer, "pattern", "")
    namespace = name.split("/", 1)[0]
    if namespace == plugin or namespace not in owners:
        return False
    warnings.warn(f"plugin {provider} offers {offer.kind} {name!r} in the namespace of plugin {namespace!r}; "
                  f"that component is skipped (a plugin's names belong in its own namespace)", PluginWarning, stacklevel=4)
    return True


def _broken(registry: Registry, broken: BrokenPlugin, strict: bool) -> None:
    registry.broken.append(broken)
    message = f"plugin {broken.name!r} from {broken.dist} {broken.version} failed to load: {broken.error}"
    if strict:
        raise PluginLoadError(message + f" (strict plugin loading: unset {ENV_STRICT} or drop --strict-plugins to skip it)")
    warnings.warn(message + "; it is skipped (see `cl-run plugins`)", PluginWarning, stacklevel=3)


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, loaded on first use with the environment's switches."""
    global _default
    if _default is None:
        _default = load_registry()
    return _default


def set_default_registry(registry: Registry | None) -> None:
    """Replace (or with None, forget) the process-wide registry, e.g. after changing the load switches."""
    global _default
    _default = registry

