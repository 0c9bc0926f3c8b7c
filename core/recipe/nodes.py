"""YAML to a tree of positioned nodes, so every recipe error can name ``file:line:col``.

Parsing uses PyYAML's SafeLoader (no arbitrary objects) with limits on nesting and aliases
(bounded_loader.py); mappings are walked by hand so duplicate keys are rejected instead of silently
keeping the last one, and tags other than plain YAML's are refused instead of ignored.
"""

from __future__ import annotations

import sys

from dataclasses import dataclass, field
from typing import Any

import yaml

from clrun.recipe.bounded_loader import BoundedLoader
from clrun.recipe.problems import Problem, RecipeError
from clrun.recipe.text import read_recipe_text


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


YAML = "tag:yaml.org,2002:"
SCALAR_KINDS = {
    f"{YAML}str": "text", f"{YAML}int": "whole number", f"{YAML}float": "number", f"{YAML}bool": "true/false value",
    f"{YAML}null": "null", f"{YAML}timestamp": "date",
}
"""Scalar tags a recipe may carry (implicitly, or written out like ``!!str``), with what they mean."""
TEXT_TAG = f"{YAML}value"  # a lone plain "=": PyYAML resolves it but has no constructor; it is text


def parse_yaml(text: str, file: str, problems: list[Problem] | None = None) -> Node:
    """Parse one YAML document into a Node tree; raise RecipeError listing every duplicate key.

    With ``problems``, duplicate keys (the first value is kept) are appended to it instead, so the
    caller can validate the tree and report them together with the rest. Text that is not YAML, too
    deep, an alias bomb, or a value with a tag other than plain YAML's is always raised at once.
    """
    try:
        loader = BoundedLoader(text)  # the reader refuses control characters (NUL, binary garbage) here
    except yaml.reader.ReaderError as exc:
        raise RecipeError([_unprintable(text, file, exc)]) from None
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
    builder = _TreeBuilder(file, loader)
    node = builder.convert(root, "")
    if builder.refused:
        raise RecipeError(builder.refused + builder.skipped)
    if problems is not None:
        problems.extend(builder.skipped)
    elif builder.skipped:
        raise RecipeError(builder.skipped)
    return node


def _unprintable(text: str, file: str, exc: yaml.reader.ReaderError) -> Problem:
    line = text.count("\n", 0, exc.position) + 1
    col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    return Problem(file, line, col, "", f"control character #x{exc.character:04x} is not allowed in YAML; "
                   "a recipe is plain text: is this the right file?")


def _shown_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(YAML) if tag.startswith(YAML) else tag


def _shortened(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _TreeBuilder:
    """Turns composed YAML nodes into Nodes; collects duplicate keys and refused values separately."""

    def __init__(self, file: str, loader: yaml.SafeLoader):
        self.file = file
        self.loader = loader
        self.skipped: list[Problem] = []  # keys left out (duplicates, merge keys): reported with validation's problems
        self.refused: list[Problem] = []  # tags and unreadable values: the tree is not usable

    def convert(self, node: yaml.Node, path: str) -> Node:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, yaml.MappingNode) and node.tag == f"{YAML}map":
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode) and node.tag == f"{YAML}seq":
            items = [self.convert(v, f"{path}.{i}") for i, v in enumerate(node.value)]
            return Node(items, self.file, line, col)
        if isinstance(node, yaml.ScalarNode) and (node.tag in SCALAR_KINDS or node.tag == TEXT_TAG):
            value = self._scalar(node, path)
            raw = node.value if node.style is None else None  # only plain (unquoted) scalars fall into YAML 1.1 traps
            return Node(value, self.file, line, col, raw=raw)
        self.refused.append(Problem(self.file, line, col, path,
                                    f"YAML tag {_shown_tag(node.tag)!r} is not allowed in a recipe, which holds only "
                                    "text, numbers, true/false, null, lists and mappings; remove the tag"))
        return Node(None, self.file, line, col)

    def _mapping(self, node: yaml.MappingNode, path: str) -> Node:
        out: dict[str, Node] = {}
        positions: dict[str, tuple[int, int]] = {}
        for key_node, value_node in node.value:
            kl, kc = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key_node.tag == f"{YAML}merge":
                self.skipped.append(Problem(self.file, kl, kc, path,
                                               "YAML merge keys (<<) are not supported; write the keys out"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.refused.append(Problem(self.file, kl, kc, path, "a key must be a name, not a list or mapping"))
                continue
            key = self.convert(key_node, path).value
            if not isinstance(key, str):
                key = str(key)
            child_path = f"{path}.{key}" if path else key
            if key in out:
                first = positions[key]
                self.skipped.append(Problem(self.file, kl, kc, child_path,
                                               f"duplicate key {key!r} (first set at line {first[0]}); keep one"))
                continue
            positions[key] = (kl, kc)
            out[key] = self.convert(value_node, child_path)
        return Node(out, self.file, node.start_mark.line + 1, node.start_mark.column + 1, key_positions=positions)

    def _scalar(self, node: yaml.ScalarNode, path: str):
        if node.tag == TEXT_TAG:
            return node.value
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            # an explicit tag on text that does not fit it (``!!int abc``, ``!!bool maybe``, ``!!timestamp x``,
            # an empty ``!!float``), a date such as 2024-13-01, or an integer over Python's 4300-digit limit
            reason = f" ({str(exc.args[0]).split(': ')[0]})" if isinstance(exc, ValueError) and exc.args else ""
            if "integer string conversion" in reason:  # Python's wording differs between versions
                reason = f" (more than Python's limit of {sys.get_int_max_str_digits()} digits)"
            self.refused.append(Problem(self.file, node.start_mark.line + 1, node.start_mark.column + 1, path,
                                        f"{_shortened(node.value)!r} is not a valid {SCALAR_KINDS[node.tag]}{reason}; "
                                        "fix it, or quote it to use it as text"))
            return None


def load_yaml_file(path: str, problems: list[Problem] | None = None) -> Node:
    """Read and parse a recipe file (see read_recipe_text for its limits) into a Node tree."""
    return parse_yaml(read_recipe_text(path), path, problems)
