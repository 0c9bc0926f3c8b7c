"""Check a Node tree against type hints: recipe sections (dataclasses) and component factories alike.

Factories' signatures are the schema (torchtitan-style): a recipe entry's keys are the factory's
keyword arguments, checked and coerced against its type hints. Problems are collected, not raised,
so a user sees every mistake of a recipe at once.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import os
import re
import typing
from typing import Any, Callable, Literal

from clrun.checked import violation
from clrun.component import INJECTED, Nested
from clrun.errors import ComponentError
from clrun.recipe.nodes import Node
from clrun.recipe.problems import Problem
from clrun.recipe.spec import ComponentSpec
from clrun.recipe.types import NoneType, describe, describe_value, hints, is_union, parameters
from clrun.registry import Registry
from clrun.schedule import Schedule

INVALID = object()  # the value of a node that had a problem (already recorded)

_FLOAT_STRING = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n", "true", "false"}
# The kinds whose float settings may follow a schedule (clrun.schedule): the training loop sets them each step.
SCHEDULABLE = ("loss", "projector", "predictor", "optimizer")


def _checkable(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return annotation in (bool, int, float, str, list, tuple, dict) or origin is not None or dataclasses.is_dataclass(annotation)


def did_you_mean(word: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class Validator:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.problems: list[Problem] = []
        self.schedulable = False  # while checking the settings of a SCHEDULABLE component

    def error(self, node: Node, path: str, message: str) -> object:
        self.problems.append(Problem(node.file, node.line, node.col, path, message))
        return INVALID

    # -- a value against a type hint -------------------------------------------------------------
    def check(self, node: Node, annotation: Any, path: str) -> Any:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        value = node.value
        if annotation in (Any, inspect.Parameter.empty, object) or isinstance(annotation, str):
            return node.plain()
        if origin is typing.Annotated:
            nested = [m for m in args[1:] if isinstance(m, Nested)]
            if nested:
                return self.nested(node, nested[0], path)
            return self.limited(node, annotation, self.check(node, args[0], path), path)
        if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
            return self.section(node, annotation, path)
        if is_union(annotation):
            return self.union(node, annotation, path)
        if annotation is NoneType:
            return None if value is None else self.mismatch(node, annotation, path)
        if origin is Literal:
            if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
                return value
            choices = ", ".join(repr(a) for a in args)
            hint = did_you_mean(str(value), [str(a) for a in args]) if isinstance(value, str) else ""
            return self.error(node, path, f"expected one of {choices}, got {describe_value(value)}{hint}")
        if annotation is bool:
            return value if isinstance(value, bool) else self.mismatch(node, annotation, path)
        if annotation is int:
            if isinstance(value, int) and not isinstance(value, bool):
                if node.raw and re.fullmatch(r"[-+]?0\d+", node.raw):
                    return self.error(node, path, f"{node.raw} reads as octal {value} in YAML 1.1; write it without the leading 0")
                return value
            return self.mismatch(node, annotation, path)
        if annotation is float:
            if isinstance(value, dict) and "schedule" in value:
                if self.schedulable:
                    return self.section(node, Schedule, path)
                return self.error(node, path, f"expected a number, got a schedule; schedules are for the settings of "
                                              f"a {', '.join(SCHEDULABLE[:-1])} or {SCHEDULABLE[-1]}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str) and _FLOAT_STRING.match(value.strip()):
                return float(value)  # YAML 1.1 reads 1e-3 as a string; the hint says float, so take it
            return self.mismatch(node, annotation, path)
        if annotation is str or annotation is os.PathLike:
            return value if isinstance(value, str) else self.mismatch(node, annotation, path)
        if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
            return self.sequence(node, annotation, path)
        if origin in (dict, collections.abc.Mapping) or annotation is dict:
            return node.plain() if isinstance(value, dict) else self.mismatch(node, annotation, path)
        return node.plain()  # a type we cannot check from YAML (Tensor, enum, callable): pass it through

    def limited(self, node: Node, annotation: Any, value: Any, path: str) -> Any:
        """``value`` (already checked against the type) against the ``clrun.Range`` limits in ``annotation``;
        a schedule's every value is checked, at its own key."""
        if value is INVALID:
            return value
        if isinstance(value, Schedule):
            fields = ["start", "end"] + (["warmup_start"] if value.warmup_epochs or value.warmup_steps else [])
            for name in fields:
                problem = violation(getattr(value, name), annotation) if getattr(value, name) is not None else None
                if problem:
                    child = node.value.get(name, node)
                    return self.error(child, f"{path}.{name}", problem)
            return value
        problem = violation(value, annotation)
        return self.error(node, path, problem) if problem else value

    def mismatch(self, node: Node, annotation: Any, path: str) -> object:
        value = node.value
        message = f"expected {describe(annotation)}, got {describe_value(value)}"
        wanted = set(typing.get_args(annotation)) | {annotation}
        if isinstance(value, bool) and node.raw and node.raw.lower() in _YAML11_BOOLS and str in wanted:
            message += f" (YAML 1.1 reads {node.raw} as a boolean: quote it, '{node.raw}')"
        elif isinstance(value, str) and value.strip().startswith("(") and (list in wanted or tuple in wanted or any(typing.get_origin(a) in (list, tuple) for a in wanted)):
            message += f" (YAML has no tuples: write a list, [{value.strip()[1:-1]}])"
        elif isinstance(value, str) and value.strip().startswith("["):
            message += " (quoted? remove the quotes to make it a list)"
        return self.error(node, path, message)

    def union(self, node: Node, annotation: Any, path: str) -> Any:
        members = typing.get_args(annotation)
        if node.value is None and NoneType in members:
            return None
        candidates = [a for a in members if a is not NoneType]
        # YAML gives only scalars, lists and mappings: a member we cannot check (a Tensor, an enum)
        # would accept anything, so it is tried only when no member can be checked.
        checkable = [a for a in candidates if _checkable(a)]
        if checkable:
            candidates = checkable
        if len(candidates) == 1:
            return self.check(node, candidates[0], path)
        for member in candidates:
            before = len(self.problems)
            result = self.check(node, member, path)
            if len(self.problems) == before:
                return result
            del self.problems[before:]
        return self.mismatch(node, annotation, path)

    def sequence(self, node: Node, annotation: Any, path: str) -> Any:
        if not isinstance(node.value, list):
            return self.mismatch(node, annotation, path)
        origin, args = typing.get_origin(annotation) or annotation, typing.get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(node.value):
                return self.error(node, path, f"expected {describe(annotation)}, got a list of {len(node.value)}")
            items = [self.check(n, a, f"{path}.{i}") for i, (n, a) in enumerate(zip(node.value, args))]
        else:
            inner = args[0] if args else Any
            items = [self.check(n, inner, f"{path}.{i}") for i, n in enumerate(node.value)]
        if any(i is INVALID for i in items):
            return INVALID
        return tuple(items) if origin is tuple else items

    # -- mappings of keyword arguments: recipe sections and component entries -------------------
    def arguments(self, node: Node, factory: Callable[..., Any], path: str, what: str, skip: tuple[str, ...] = ()) -> Any:
        """Check a mapping's keys and values against ``factory``'s keyword parameters."""
        if not isinstance(node.value, dict):
            return self.error(node, path, f"expected a mapping of {what}'s settings, got {describe_value(node.value)}")
        params, var_keyword = parameters(factory)
        types_ = hints(factory)
        accepted = {n: p for n, p in params.items() if n not in skip}
        kwargs: dict[str, Any] = {}
        ok = True
        for key, child in node.value.items():
            child_path = f"{path}.{key}" if path else key
            if key in skip:
                line, col = node.key_positions.get(key, (child.line, child.col))
                self.problems.append(Problem(child.file, line, col, child_path, f"{key!r} is set by cl-run itself for {what}; remove it"))
                ok = False
            elif key in accepted:
                value = self.check(child, types_.get(key, accepted[key].annotation), child_path)
                ok &= value is not INVALID
                kwargs[key] = value
            elif var_keyword:
                kwargs[key] = child.plain()
            else:
                line, col = node.key_positions.get(key, (child.line, child.col))
                hint = did_you_mean(key, accepted) or f"; {what} takes: {', '.join(accepted) or 'no settings'}"
                self.problems.append(Problem(child.file, line, col, child_path, f"unknown key {key!r} for {what}{hint}"))
                ok = False
        for name, p in accepted.items():
            if p.default is inspect.Parameter.empty and name not in node.value:
                self.error(node, f"{path}.{name}" if path else name, f"missing required value for {what}")
                ok = False
        return kwargs if ok else INVALID

    def section(self, node: Node, cls: type, path: str) -> Any:
        what = f"section '{path}'" if path else "a recipe"
        kwargs = self.arguments(node, cls, path, what)
        if kwargs is INVALID:
            return INVALID
        try:
            return cls(**kwargs)
        except ValueError as exc:  # the section's own consistency checks (__post_init__)
            field = getattr(exc, "field", None)  # FieldError, ScheduleError: a check on one field
            if field is None:
                return self.error(node, path, str(exc))
            child = node.value.get(field, node)  # point at its value, or at the section when it is missing
            return self.error(child, f"{path}.{field}" if path else field, str(exc))

    def nested(self, node: Node, marker: Nested, path: str) -> Any:
        if marker.many:
            if not isinstance(node.value, list):
                return self.error(node, path, f"expected a list of {marker.kind} entries, got {describe_value(node.value)}")
            items = [self.component(n, marker.kind, f"{path}.{i}") for i, n in enumerate(node.value)]
            return INVALID if any(i is INVALID for i in items) else items
        return self.component(node, marker.kind, path)

    def component(self, node: Node, kind: str, path: str) -> Any:
        """A component entry: ``{name: ns/name, key: value, ...}`` or just the name as a string."""
        if isinstance(node.value, str):
            node = Node({"name": Node(node.value, node.file, node.line, node.col)}, node.file, node.line, node.col,
                        key_positions={"name": (node.line, node.col)})
        if not isinstance(node.value, dict):
            return self.error(node, path, f"expected a {kind} entry (a mapping with 'name: namespace/name'), got {describe_value(node.value)}")
        name_node = node.value.get("name")
        if name_node is None:
            return self.error(node, f"{path}.name" if path else "name", f"missing required value: which {kind} to use (e.g. `cl-run components {kind}`)")
        name = name_node.value
        if not isinstance(name, str):
            return self.error(name_node, f"{path}.name", f"expected a {kind} name (a string), got {describe_value(name)}")
        try:
            if not self.registry.has(kind, name):
                return self.error(name_node, f"{path}.name", self.registry.unknown_message(kind, name))
            component = self.registry.get(kind, name)
            factory = component.factory  # imported here when the plugin offered it by import path
        except ComponentError as exc:  # a plugin's lazy namespace or factory that fails to import
            return self.error(name_node, f"{path}.name", str(exc))
        settings = Node({k: v for k, v in node.value.items() if k != "name"}, node.file, node.line, node.col,
                        key_positions=node.key_positions)
        outer, self.schedulable = self.schedulable, kind in SCHEDULABLE
        try:
            kwargs = self.arguments(settings, factory, path, f"{kind} {name!r}", skip=INJECTED.get(kind, ()))
        finally:
            self.schedulable = outer
        if kwargs is INVALID:
            return INVALID
        positions = {key: f"{child.file}:{child.line}:{child.col}" for key, child in settings.value.items()}
        return ComponentSpec(component, kwargs, f"{node.file}:{node.line}:{node.col}", path, positions)
