"""The limits a factory declares for its arguments, in its signature:

    def __init__(self, temperature: Annotated[float, clrun.Range(min=1e-3, hint="the paper uses 0.5")] = 0.5): ...

One declaration serves three readers: the recipe validator refuses a value outside the range at its
recipe line (``file:line:col``), ``clrun.checked`` refuses it on direct construction (a
``ComponentError`` whose ``argument`` names it), and ``cl-run components KIND NAME`` prints it. So a
constructor body holds only what a signature cannot say: how arguments relate to each other.

No torch here: the validator and ``cl-run components`` read ranges without importing it.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

NoneType = type(None)


@dataclass(frozen=True)
class Range:
    """The values a numeric argument accepts, and a hint for choosing one.

    min, max:       the bounds, inclusive unless ``exclusive_min`` / ``exclusive_max``; ``None``: unbounded.
    hint:           what the paper or the usual setting is ("the paper uses 0.5"), shown in parentheses after
                    the requirement in errors and by ``cl-run components KIND NAME``.
    why:            what goes wrong outside the range, appended to the error after the refused value.

    Use it as ``Annotated[float, Range(min=0, exclusive_min=True)]`` or ``Annotated[int, Range(min=1)]``.
    The annotated type decides what else is refused: an ``int`` argument refuses booleans and non-integers;
    a ``float`` one refuses booleans, strings, NaN and infinities. ``Range(hint=...)`` without bounds only
    documents the argument (any annotated type).
    """

    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    hint: str = ""
    why: str = ""

    def bounds(self) -> str:
        """The bounds in words: ``"> 0 and <= 1"``; empty when unbounded."""
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.exclusive_min else '>='} {self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.exclusive_max else '<='} {self.max:g}")
        return " and ".join(parts)

    def requirement(self, base: Any) -> str:
        """What a valid value is, for a human: ``"a number > 0 and <= 1 (the paper uses 0.9)"``."""
        noun = {int: "an integer", float: "a number"}.get(_numeric(base), "")
        text = " ".join(part for part in (noun, self.bounds()) if part)
        hint = f"({self.hint})" if self.hint else ""
        return f"{text} {hint}" if text and hint else text or hint

    def violation(self, value: Any, base: Any) -> str | None:
        """Why ``value`` is refused for an argument annotated ``base`` (``int`` or ``float``), or ``None``
        when it is accepted. The text reads after the argument's name: ``"must be an integer >= 1, got 0"``."""
        kind = _numeric(base)
        if kind is None:
            return None  # a hint for a non-numeric argument: nothing to enforce
        if not self.accepts(value, kind):
            text = f"must be {self.requirement(base)}, got {value!r}"
            return f"{text}: {self.why}" if self.why else text
        return None

    def accepts(self, value: Any, kind: type) -> bool:
        """Whether ``value`` is a ``kind`` (int or float) inside the bounds."""
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            return False
        if kind is float and not math.isfinite(value):
            return False
        if self.min is not None and (value <= self.min if self.exclusive_min else value < self.min):
            return False
        if self.max is not None and (value >= self.max if self.exclusive_max else value > self.max):
            return False
        return True


def _numeric(base: Any) -> type | None:
    """``int`` or ``float`` when ``base`` is that type (possibly ``Optional``), else ``None``."""
    if typing.get_origin(base) in (Union, types.UnionType):
        members = [a for a in typing.get_args(base) if a is not NoneType]
        return _numeric(members[0]) if len(members) == 1 else None
    return base if base in (int, float) else None


def limits(annotation: Any) -> tuple[Any, list[Range]]:
    """``(the annotated type, its Ranges)`` of a type hint: ``Annotated[float, Range(...)]`` gives
    ``(float, [Range(...)])``; ``Optional[Annotated[...]]`` gives ``(Optional[float], [...])``. A hint
    without a Range gives ``(annotation, [])``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return args[0], [m for m in args[1:] if isinstance(m, Range)]
    if origin in (Union, types.UnionType):
        members = [limits(a) for a in args]
        ranges = [r for _, found in members for r in found]
        if ranges:
            return Union[tuple(base for base, _ in members)], ranges
    return annotation, []


def choice_violation(value: Any, annotation: Any, hint: str = "") -> str | None:
    """Why ``value`` is refused for a ``Literal[...]`` or ``bool`` argument (``None`` when accepted or when
    the annotation is neither): what ``clrun.checked`` checks beyond ranges, as the recipe validator does.
    ``hint``: a Range's hint, shown after the requirement."""
    hint = f" ({hint})" if hint else ""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not NoneType]
        if value is None and NoneType in typing.get_args(annotation):
            return None
        return choice_violation(value, members[0], hint) if len(members) == 1 else None
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        if value in choices and not (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}{hint}, got {value!r}"
    if annotation is bool and not isinstance(value, bool):
        return f"must be true or false{hint}, got {value!r}"
    return None
