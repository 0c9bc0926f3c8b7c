"""Limits on what the recipe loader accepts, so a hostile or mistaken file fails fast with a clear error.

A recipe names components and a few dozen settings: a few KiB, nested a handful of levels. The limits
sit far above any real recipe and far below what makes the loader slow: PyYAML's pure-Python parser
takes ~50 us a value, so the worst 64 KiB file (32,000 one-character values in a flow list) parses in
under 2 s on a busy CPU, and an alias bomb ("billion laughs") is refused before anything is expanded.
"""

from __future__ import annotations

MAX_RECIPE_BYTES = 64 * 1024
"""Largest recipe file read (64 KiB, twenty times the largest shipped recipe); a bigger one is refused unparsed."""

MAX_OVERRIDE_CHARS = 10_000
"""Longest value of one command-line override (``key=value``)."""

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists, aliases included (well within Python's recursion limit)."""

MAX_ALIAS_NODES = 10_000
"""Values that all aliases (``*name``) of one document may copy in total, nested values counted."""
