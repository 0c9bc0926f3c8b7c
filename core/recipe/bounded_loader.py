"""PyYAML's SafeLoader with limits on nesting and on what aliases may copy.

SafeLoader builds only plain data, but two inputs still hurt it: deep nesting overflows Python's
recursion (the composer recurses once per level) and a "billion laughs" alias bomb, small on disk,
expands to billions of values when the tree is walked. This loader refuses both while composing,
at the line and column where the limit is passed, before anything is expanded.
"""

from __future__ import annotations

import yaml
from yaml.composer import ComposerError

from clrun.recipe.limits import MAX_ALIAS_NODES, MAX_DEPTH


class BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses nesting deeper than MAX_DEPTH and aliases copying over MAX_ALIAS_NODES values."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0  # nesting of the node being composed (the root is 1)
        self._copied = 0  # values copied by aliases so far, nested values counted
        self._open_anchors: set[str] = set()  # anchors of collections still being composed
        self._extent: dict[int, tuple[int, int]] = {}  # id(node) -> (values in it, its nesting depth)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._check_alias(self.peek_event())
            return super().compose_node(parent, index)
        event = self.peek_event()
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep; a recipe needs a handful",
                                event.start_mark)
        anchor = event.anchor
        self._depth += 1
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)

    def _check_alias(self, event: yaml.AliasEvent) -> None:
        anchor = event.anchor
        if anchor in self._open_anchors:
            raise ComposerError(None, None, f"alias *{anchor} is inside the value it names (a value cannot contain itself)",
                                event.start_mark)
        if anchor not in self.anchors:
            return  # the composer reports the undefined alias
        values, depth = self._measure(self.anchors[anchor])
        if self._depth + depth > MAX_DEPTH:
            raise ComposerError(None, None, f"alias *{anchor} nests values more than {MAX_DEPTH} levels deep",
                                event.start_mark)
        self._copied += values
        if self._copied > MAX_ALIAS_NODES:
            raise ComposerError(None, None, f"aliases copy more than {MAX_ALIAS_NODES} values (an alias bomb?); "
                                "write the values out or use fewer aliases", event.start_mark)

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """(values in ``node`` counting nested ones, its depth); memoised, so shared subtrees cost once."""
        known = self._extent.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        sizes = [self._measure(child) for child in children]
        extent = (1 + sum(s[0] for s in sizes), 1 + max((s[1] for s in sizes), default=0))
        self._extent[id(node)] = extent
        return extent
