"""Loading plugins: the built-ins, then every installed ``clrun`` entry point, into one Registry.

pluggy's own ``load_setuptools_entrypoints`` stops at the first plugin that fails to import, which
would let one broken third-party package make the whole CLI unusable. This loop records a broken
plugin (name, distribution, version, error), warns and goes on; ``strict=True`` makes it fatal.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from typing import Any

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


def load_registry(autoload: bool | None = None, strict: bool | None = None) -> Registry:
    """Build a Registry from the built-in plugins and (unless ``autoload`` is off) installed entry points.

    ``autoload`` defaults to on unless ``CLRUN_DISABLE_PLUGIN_AUTOLOAD`` is set; ``strict`` defaults to
    ``CLRUN_STRICT_PLUGINS``. A broken built-in is always fatal: it is a bug in cl-run itself.
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
        error = _register(registry, module, module_name, "cl-run", __version__)
        if error:
            raise PluginLoadError(f"built-in plugin {module_name} failed to load: {error}")
    if autoload:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.metadata["Name"] if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # any import-time failure of third-party code
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = _register(registry, plugin, ep.name, dist, version)
            if error:
                _broken(registry, BrokenPlugin(ep.name, dist, version, error), strict)
    return registry


def _register(registry: Registry, plugin: Any, name: str, dist: str, version: str) -> str | None:
    """Register one plugin object; return an error string instead of raising, so loading goes on."""
    pm = ClrunPluginManager(DiscoverySpecs)
    try:
        pm.register(plugin, name=name)
        pm.check_pending()  # a misspelled hook name in this plugin
        provider = f"{name} ({dist} {version})"
        count = 0
        namespaces: list[str] = []
        for impl in pm.hook.clrun_components.get_hookimpls():
            offers = list(impl.function() or ())
            count += registry.add_all(offers, provider)
            namespaces += [f"{o.kind} {o.pattern}" for o in offers if isinstance(o, LazyComponents)]
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    registry.plugins.append(PluginInfo(name, dist, version, count, tuple(namespaces)))
    return None


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

