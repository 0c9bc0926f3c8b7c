"""Type hints read off factories and sections: how to fetch them robustly and describe them to users."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any, Callable, Literal, Union

NoneType = type(None)


def is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def parameters(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword parameters a factory accepts, and whether it also takes ``**kwargs``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no introspectable signature
        return {}, True
    params: dict[str, inspect.Parameter] = {}
    var_keyword = False
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_keyword = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[p.name] = p
    return params, var_keyword


def hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """Resolved type hints of a factory's parameters; unresolvable ones (forward refs) become Any."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    target = getattr(target, "func", target)  # functools.partial
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:
        raw = getattr(target, "__annotations__", {}) or {}
        return {k: (Any if isinstance(v, str) else v) for k, v in raw.items()}


def describe(annotation: Any) -> str:
    """A short human name for a type hint: 'float', 'list of int', 'one of "a", "b"', ..."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return "any value"
    if annotation is NoneType:
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe(args[0])
    if is_union(annotation):
        names = [describe(a) for a in args if a is not NoneType]
        text = " or ".join(dict.fromkeys(names))
        return text + (" or null" if NoneType in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, typing.Sequence, collections.abc.Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
        inner = args[0] if args else Any
        return f"a list of {describe(inner)}"
    if origin in (dict, typing.Mapping, collections.abc.Mapping):
        return "a mapping"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def describe_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
