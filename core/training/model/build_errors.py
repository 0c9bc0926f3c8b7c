"""Collect the errors of a recipe's component entries, so that one `cl-run check` names every entry that
cannot be built (all at once, as recipe problems are), not only the first."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from clrun.errors import ComponentError, ComponentErrors
from clrun.recipe.spec import ComponentSpec

T = TypeVar("T")


class BuildErrors:
    def __init__(self) -> None:
        self.errors: list[ComponentError] = []

    def build(self, spec: ComponentSpec, fallback: Any = None, **injected: Any) -> Any:
        """``spec`` built with ``injected``, or ``fallback`` after recording why it could not be."""
        return self.attempt(lambda: spec.build(**injected), fallback)

    def attempt(self, make: Callable[[], T], fallback: T) -> T:
        try:
            return make()
        except ComponentError as exc:
            self.errors += exc.errors if isinstance(exc, ComponentErrors) else [exc]
            return fallback

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ComponentErrors(self.errors)
