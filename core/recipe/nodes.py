"""YAML to a tree of positioned nodes, so every recipe error can name ``file:line:col``.

Parsing uses PyYAML's SafeLoader (no arbitrary objects); mappings are walked by hand so duplicate
keys are rejected instead of silently keeping the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from clrun.recipe.problems import Problem, RecipeError


@dataclass
class Node:
    """A YAML value with where it came from.

    ``value`` is a dict[str, Node], a list[Node] or a plain scalar. ``raw`` is a plain scalar's source
    text (used to spot YAML 1.1 traps such as ``1e-3`` read as a string or ``no`` read as a boolean).
    """

    value: Any
    file: str
    line: int  # 1-based
    col: int  # 1-based
    raw: str | None = None
    key_positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def plain(self) -> Any:
        """The value without positions."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def parse_yaml(text: str, file: str, problems: list[Problem] | None = None) -> Node:
    """Parse one YAML document into a Node tree; raise RecipeError listing every duplicate key.

    With ``problems``, duplicate keys (the first value is kept) are appended to it instead, so the
    caller can validate the tree and report them together with the rest.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([Problem(file, line, col, "", f"invalid YAML: {problem}")]) from None
    finally:
        loader.dispose()
    if root is None:
        return Node({}, file, 1, 1)
    found: list[Problem] = []
    node = _convert(root, file, loader, found)
    if problems is not None:
        problems.extend(found)
    elif found:
        raise RecipeError(found)
    return node


def _convert(node: yaml.Node, file: str, loader: yaml.SafeLoader, problems: list[Problem], path: str = "") -> Node:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        positions: dict[str, tuple[int, int]] = {}
        for key_node, value_node in node.value:
            kl, kc = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(Problem(file, kl, kc, path, "YAML merge keys (<<) are not supported; write the keys out"))
                continue
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            child_path = f"{path}.{key}" if path else key
            if key in out:
                first = positions[key]
                problems.append(
                    Problem(file, kl, kc, child_path, f"duplicate key {key!r} (first set at line {first[0]}); keep one")
                )
                continue
            positions[key] = (kl, kc)
            out[key] = _convert(value_node, file, loader, problems, child_path)
        return Node(out, file, line, col, key_positions=positions)
    if isinstance(node, yaml.SequenceNode):
        items = [_convert(v, file, loader, problems, f"{path}.{i}") for i, v in enumerate(node.value)]
        return Node(items, file, line, col)
    value = loader.construct_object(node, deep=True)
    raw = node.value if node.style is None else None  # only plain (unquoted) scalars fall into YAML 1.1 traps
    return Node(value, file, line, col, raw=raw)


def load_yaml_file(path: str, problems: list[Problem] | None = None) -> Node:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise RecipeError([Problem(path, 1, 1, "", f"cannot read recipe: {exc.strerror or exc}")]) from None
    return parse_yaml(text, path, problems)
