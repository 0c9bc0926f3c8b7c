"""``cl-run components KIND NAME``: one component's recipe keys (types, defaults and declared ranges) and its
docstring."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from clrun.component import INJECTED, Component
from clrun.ranges import limits
from clrun.recipe.types import hints, is_union, parameters


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    if typing.get_origin(annotation) is typing.Annotated:  # Annotated[Dataset, Nested("dataset")]
        base, *extras = typing.get_args(annotation)
        nested = next((e for e in extras if hasattr(e, "kind")), None)
        return f"{nested.kind} entry{' list' if getattr(nested, 'many', False) else ''}" if nested else _type_name(base)
    if isinstance(annotation, type):
        return annotation.__name__
    if is_union(annotation):  # Optional[Annotated[float, Range(...)]]: "float | None"
        return " | ".join(_type_name(a) if a is not type(None) else "None" for a in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")


def _limits(annotation: Any) -> str:
    """The argument's declared ``clrun.Range`` limits and hints, e.g. ``"  a number >= 0.001 (the paper uses 0.1)"``."""
    base, ranges = limits(annotation)
    return "".join(f"  {r.requirement(base)}" for r in ranges)


def describe(component: Component) -> list[str]:
    """Lines for a person writing a recipe entry: header, the keys with types, defaults and ranges, the
    values cl-run supplies itself, and the factory's docstring."""
    factory = component.factory
    params, var_keyword = parameters(factory)
    types = hints(factory)
    injected = [name for name in INJECTED.get(component.kind, ()) if name in params]
    lines = [f"{component.kind} {component.name}  [{component.provider}]"]
    if component.summary:
        lines.append(f"  {component.summary}")
    lines.append("recipe keys:")
    keys = [p for name, p in params.items() if name not in injected]
    for p in keys:
        default = "required" if p.default is inspect.Parameter.empty else f"default {p.default!r}"
        annotation = types.get(p.name, p.annotation)
        lines.append(f"  {p.name}: {_type_name(annotation)}  ({default}){_limits(annotation)}")
    if not keys:
        lines.append("  (none)")
    if var_keyword:
        lines.append("  ... and any other keyword the factory takes (**kwargs)")
    if injected:
        lines.append(f"supplied by cl-run: {', '.join(injected)}")
    doc = inspect.getdoc(getattr(factory, "func", factory))  # a functools.partial documents its function
    if doc:
        lines += ["", *doc.splitlines()]
    return lines
