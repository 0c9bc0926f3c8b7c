"""The recipe's callbacks, each answerable for its own failures.

A callback comes from a plugin; when one of its hooks raises, the user must learn which callback
(name, the plugin's distribution and version, the recipe line) and what it said, not read a pluggy
traceback. ``NamedCallback`` stands in for the callback in the hook relay: same hook methods, same
markers, and a failure re-raised as a ``CallbackError`` that names it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from clrun.errors import ComponentFailure, UserError
from clrun.hookspecs import PROJECT
from clrun.recipe.spec import ComponentSpec


class CallbackError(ComponentFailure):
    """A recipe callback's hook raised; the message names the callback, its plugin and recipe line.
    ``__cause__`` holds the original exception (its traceback is printed with ``-v``)."""


def describe(spec: ComponentSpec) -> str:
    """``<kind> <name> from <plugin> (<dist> <version>) (<recipe file:line:col>)``."""
    provider = spec.component.provider or "?"
    return f"{spec.component.kind} {spec.name} from {provider} ({spec.where})"


class NamedCallback:
    """``callback``'s ``clrun_*`` hooks, each re-raising a failure as a ``CallbackError``. Other
    attributes (``state_dict``, ``evaluate``...) stay on the callback itself, which the loop keeps."""

    def __init__(self, callback: Any, spec: ComponentSpec) -> None:
        self.callback, self.label = callback, describe(spec)
        for name in dir(callback):
            method = getattr(callback, name, None)
            if name.startswith(PROJECT + "_") and callable(method):
                setattr(self, name, self._named(name, method))

    def __repr__(self) -> str:  # pluggy's validation errors name a plugin by its repr
        return self.label

    def _named(self, hook: str, method: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(method):  # a hook wrapper: pluggy drives it, errors pass as they are
            return method

        @functools.wraps(method)  # keeps the signature and the hookimpl markers pluggy reads
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except (CallbackError, UserError):  # a user error already says what to fix
                raise
            except Exception as exc:
                raise CallbackError(f"{self.label} failed in {hook}: {type(exc).__name__}: {exc}") from exc

        return call


def build(specs: list[ComponentSpec]) -> tuple[list[Any], list[NamedCallback]]:
    """The recipe's callbacks (their state is checkpointed) and their named stand-ins (for the relay)."""
    callbacks = [spec.build() for spec in specs]
    return callbacks, [NamedCallback(cb, spec) for cb, spec in zip(callbacks, specs)]
