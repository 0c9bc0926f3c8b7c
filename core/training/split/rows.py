"""Rows of a step's nested values (lists of tensors, ``Tokens``, ``Masks``, ``Branch``), taken or put together
along the batch: row ``n`` of every tensor in a step's outputs is image ``n``, so a slice of rows is a
smaller batch and a concatenation of slices is the whole one."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from clrun.training.model.branch import Branch


def batch_ranges(size: int, parts: int) -> list[range]:
    """``size`` rows in ``min(parts, size)`` consecutive ranges whose lengths differ by one at most."""
    parts = max(1, min(parts, size))
    bounds = [size * k // parts for k in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def rows(value: Any, part: range) -> Any:
    """``value`` with every tensor in it cut to the rows ``part``."""
    return map_tensors(value, lambda t: t[part.start:part.stop])


def concat(pieces: Sequence[Any]) -> Any:
    """The pieces (each a ``rows`` of one whole) put back together: every tensor concatenated along the batch;
    what is not a tensor (a token grid, None) is the first piece's."""
    first = pieces[0]
    if isinstance(first, Tensor):
        return torch.cat(list(pieces))
    if isinstance(first, (list, tuple)):
        return type(first)(concat([p[i] for p in pieces]) for i in range(len(first)))
    if isinstance(first, Branch):
        whole = Branch(**{name: concat([p.get(name) for p in pieces]) for name, _ in first.items()})
        object.__setattr__(whole, "_role", first._role)
        return whole
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(first, **{f.name: concat([getattr(p, f.name) for p in pieces])
                                             for f in dataclasses.fields(first)})
    return first


def tensors(value: Any) -> list[Tensor]:
    """Every tensor in ``value``, in a fixed order (the order ``_map`` visits them)."""
    found: list[Tensor] = []
    map_tensors(value, lambda t: found.append(t) or t)
    return found


def map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with ``fn(t)`` for every tensor ``t`` in it (lists, tuples, a ``Branch``, dataclasses)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, Branch):
        return value.map(lambda output: map_tensors(output, fn))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: map_tensors(getattr(value, f.name), fn) for f in dataclasses.fields(value)})
    return value
