"""Command-line overrides: ``train.epochs=2 backbone.name=timm/vit_small_patch16_224 views.0.count=4``."""

from __future__ import annotations

from clrun.recipe.limits import MAX_DEPTH, MAX_OVERRIDE_CHARS
from clrun.recipe.nodes import Node, parse_yaml
from clrun.recipe.problems import Problem, RecipeError

FILE = "<command line>"


def apply_overrides(root: Node, overrides: list[str] | tuple[str, ...]) -> None:
    """Set each dotted key in the recipe tree; values are parsed as YAML (``2`` is an int, ``[1, 2]`` a list).

    Problems are reported as ``<command line>:N:col``, N being the override's position (1-based).
    Missing mapping keys are created, so an override can add a setting the file leaves at its default.
    """
    problems: list[Problem] = []
    for index, text in enumerate(overrides, start=1):
        key, sep, raw_value = text.partition("=")
        if not sep or not key.strip():
            problems.append(Problem(FILE, index, 1, "", f"override {text!r} must look like dotted.key=value"))
            continue
        if len(raw_value) > MAX_OVERRIDE_CHARS:
            problems.append(Problem(FILE, index, len(key) + 2, key, f"value is {len(raw_value)} characters long, over the "
                                    f"{MAX_OVERRIDE_CHARS} allowed on the command line; put it in the recipe file"))
            continue
        if key.count(".") >= MAX_DEPTH:
            problems.append(Problem(FILE, index, 1, _shortened(key), f"key is nested more than {MAX_DEPTH} levels deep"))
            continue
        try:
            value = parse_yaml(raw_value, FILE) if raw_value.strip() else Node(None, FILE, index, len(key) + 2)
        except RecipeError as exc:
            problems.append(Problem(FILE, index, len(key) + 2, key, exc.problems[0].message))
            continue
        _relocate(value, index, len(key) + 1)
        error = _set(root, key.strip().split("."), value)
        if error:
            problems.append(Problem(FILE, index, 1, key, error))
    if problems:
        raise RecipeError(problems)


def _shortened(key: str, limit: int = 60) -> str:
    return key if len(key) <= limit else key[:limit] + "..."


def _relocate(node: Node, line: int, offset: int) -> None:
    """Positions inside an override value: line = which override, col = column in that argument."""
    node.line, node.col = line, node.col + offset
    children = node.value.values() if isinstance(node.value, dict) else node.value if isinstance(node.value, list) else ()
    for child in children:
        _relocate(child, line, offset)
    node.key_positions = {k: (line, c + offset) for k, (_, c) in node.key_positions.items()}


def _set(root: Node, parts: list[str], value: Node) -> str | None:
    node, walked = root, []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node.value, dict):
            if last or part not in node.value:
                # the key is the override's own: problems with it point at the argument (col 1)
                node.key_positions[part] = (value.line, 1)
            if last:
                node.value[part] = value
                return None
            if part not in node.value:
                node.value[part] = Node({}, value.file, value.line, value.col)
            node = node.value[part]
        elif isinstance(node.value, list):
            if not part.isdigit() or int(part) >= len(node.value):
                return f"{'.'.join(walked) or 'recipe'} is a list of {len(node.value)}; use an index from 0 to {len(node.value) - 1}"
            if last:
                node.value[int(part)] = value
                return None
            node = node.value[int(part)]
        else:
            return f"{'.'.join(walked)} is a single value, not a section; cannot set {part!r} inside it"
        walked.append(part)
    return None
