"""A griffe extension (mkdocs.yml: mkdocstrings' ``extensions``): cl-run's field lists as Markdown lists.

cl-run's docstrings describe fields and arguments as an aligned block, readable in ``help()`` and in
an editor::

    features:           online backbone features, each ``(B, F)``
    target_projections: the momentum target network's projector outputs for the *global* views only,
                        in global-view order ...

Markdown would run such a block into one paragraph. This turns each block of two or more such lines
(the descriptions starting at one column) into a list, ``- `features`: online backbone features ...``,
for the site only: the source is not changed. Indented blocks (examples, tables in monospace) and
fenced code are left as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe

FIELD = re.compile(r"^([A-Za-z_][\w.]*(?:, ?[A-Za-z_][\w.]*)*):( +)(\S.*)$")


def as_lists(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    fence = False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fence = not fence
        block = [] if fence else _field_block(lines, i)
        if len(block) < 2:
            out.append(line)
            i += 1
            continue
        if out and out[-1].strip():
            out.append("")
        for name, description in block:
            out.append(f"- `{name}`: {description}")
        i += sum(1 + len(extra) for extra in _continuations(lines, i, len(block)))
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def _field_block(lines: list[str], start: int) -> list[tuple[str, str]]:
    """The (name, description) entries of the aligned block starting at ``start``, or fewer than two."""
    entries: list[tuple[str, str]] = []
    column = None
    i = start
    while i < len(lines):
        match = FIELD.match(lines[i])
        if not match:
            break
        name, spaces, description = match.groups()
        at = len(name) + 1 + len(spaces)
        if column is None:
            column = at
        elif at != column and len(spaces) < 2:
            break
        parts = [description]
        i += 1
        while i < len(lines) and lines[i].startswith("  ") and lines[i].strip() and not FIELD.match(lines[i]):
            parts.append(lines[i].strip())
            i += 1
        entries.append((name, " ".join(parts)))
    if len(entries) >= 2 and column is not None and column > 2:
        return entries
    return []


def _continuations(lines: list[str], start: int, count: int) -> list[list[str]]:
    """For each of the block's ``count`` entries from ``start``, its continuation lines."""
    result = []
    i = start
    for _ in range(count):
        i += 1
        extra = []
        while i < len(lines) and lines[i].startswith("  ") and lines[i].strip() and not FIELD.match(lines[i]):
            extra.append(lines[i])
            i += 1
        result.append(extra)
    return result


class FieldLists(griffe.Extension):
    """Rewrite every docstring's aligned field blocks as Markdown lists."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = as_lists(obj.docstring.value)


class RealPaths(griffe.Extension):
    """Modules by their files in the repository (``core/...``, ``plugins/...``), not by the links
    docs/hooks.py lays out under build/docs-src: the path a "Source code in" note names."""

    def on_module(self, *, mod: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if not isinstance(mod.filepath, Path):
            return
        real = mod.filepath.resolve()
        if real != mod.filepath:
            if mod.filepath in loader.lines_collection:  # the source lines, under the path they are looked up by
                loader.lines_collection[real] = loader.lines_collection[mod.filepath]
            mod._filepath = real
