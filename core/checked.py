"""``clrun.checked``: a component enforces its declared argument limits on direct construction, and knows
its registered name.

A recipe's values are checked by the recipe validator before any factory runs; a component built in
Python (``CosineLoss(scale=0)``, a test, a notebook) passes through this decorator instead, which
reads the same ``clrun.Range`` annotations and raises the same ``ComponentError`` (``argument`` set), so a
constructor holds no range checks of its own.

Names: the registry names every instance it builds (``instance.component_name``, see
``clrun.recipe.spec``), and a component's messages start with it ("mine/cosine needs ..."). While a
factory runs under the registry, ``building_as(name)`` makes that name known to ``checked`` too, so the
constructor's own messages can use ``self.component_name``. A component built directly gets the name it
is registered under (found by its import path), else its class name.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import typing
from typing import Any, Callable, Iterator, TypeVar

from clrun.errors import ComponentError
from clrun.ranges import NoneType, choice_violation, limits

NAME_ATTRIBUTE = "component_name"
"""The attribute that holds a built component's registered name (``"mine/cosine"``)."""

_building: contextvars.ContextVar[str | None] = contextvars.ContextVar("clrun_building", default=None)
_registered: dict[str, str] = {}  # "module:qualname" -> registered name, found once per factory

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def building_as(name: str) -> Iterator[None]:
    """Within this context, a factory being called builds the component registered as ``name``."""
    token = _building.set(name)
    try:
        yield
    finally:
        _building.reset(token)


def registered_name(factory: Any) -> str:
    """The name under which ``factory`` (a class or function) is registered, looked up by its import path
    among the default registry's components; its ``__name__`` when it is not registered."""
    path = f"{factory.__module__}:{factory.__qualname__}"
    if path not in _registered:
        from clrun.plugin_manager import default_registry  # here: the registry imports every plugin module

        found = [c.name for c in default_registry().list(expand_lazy=False) if c.source in (path, factory)]
        _registered[path] = found[0] if found else factory.__name__
    return _registered[path]


def name_of(component: Any) -> str:
    """A component's name for its messages: the one the registry gave it, else the one it is registered
    under, else its class name."""
    name = getattr(component, NAME_ATTRIBUTE, None)
    return name if isinstance(name, str) else registered_name(type(component))


def checked(factory: F) -> F:
    """Decorate a component class (or factory function) to refuse arguments outside their declared
    ``clrun.Range`` (and ``Literal`` choices, and non-booleans for ``bool``) when it is called directly,
    with a ``ComponentError`` that names the component and the argument (``error.argument``).

    On a class it also sets ``self.component_name`` before ``__init__`` runs: the registered name, so that
    the constructor's and ``forward``'s messages can start with it.
    """
    if inspect.isclass(factory):
        init = factory.__init__
        check = _Checker(init)

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if NAME_ATTRIBUTE not in vars(self):  # the outermost decorated __init__ names it (a subclass's)
                object.__setattr__(self, NAME_ATTRIBUTE, _building.get() or registered_name(type(self)))
            check(getattr(self, NAME_ATTRIBUTE), (self, *args), kwargs)
            init(self, *args, **kwargs)

        factory.__init__ = __init__  # type: ignore[misc]
        return factory

    check = _Checker(factory)

    @functools.wraps(factory)
    def call(*args: Any, **kwargs: Any) -> Any:
        check(_building.get() or registered_name(factory), args, kwargs)
        return factory(*args, **kwargs)

    return call  # type: ignore[return-value]


class _Checker:
    """The argument checks of one function, its hints resolved on first use (a forward reference in a
    module under ``from __future__ import annotations`` resolves only once the module is loaded)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.signature = inspect.signature(function)
        self.hints: dict[str, Any] | None = None

    def __call__(self, name: str, args: tuple, kwargs: dict) -> None:
        if self.hints is None:
            try:
                self.hints = typing.get_type_hints(self.function, include_extras=True)
            except Exception:  # an unresolvable hint: check nothing rather than fail the construction
                self.hints = {}
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            return  # the call itself raises the precise TypeError
        for argument, value in bound.arguments.items():
            problem = violation(value, self.hints.get(argument))
            if problem:
                raise ComponentError(f"{name}: {argument} {problem}", argument=argument)


def violation(value: Any, annotation: Any) -> str | None:
    """Why ``value`` is refused for an argument annotated ``annotation`` (its Ranges, Literal choices, bool),
    or ``None``."""
    if annotation is None:
        return None
    base, ranges = limits(annotation)
    if value is None and NoneType in typing.get_args(base):
        return None
    for limit in ranges:
        problem = limit.violation(value, base)
        if problem:
            return problem
    return choice_violation(value, base, next((r.hint for r in ranges if r.hint), ""))
