"""Recipes: YAML files that choose components by name and set the training loop's options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clrun.plugin_manager import default_registry
from clrun.recipe.nodes import Node, load_yaml_file, parse_yaml
from clrun.recipe.overrides import apply_overrides
from clrun.recipe.problems import Problem, RecipeError
from clrun.recipe.schema import DataSection, Recipe, RunSection, TrainSection, ViewSection
from clrun.recipe.spec import ComponentSpec
from clrun.recipe.validate import INVALID, Validator
from clrun.registry import Registry

__all__ = [
    "ComponentSpec", "DataSection", "Problem", "Recipe", "RecipeError", "RunSection", "TrainSection",
    "ViewSection", "load_recipe", "recipe_from_node", "resolved",
]


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), registry: Registry | None = None,
                sections_from: str | Path | None = None) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError listing every problem at once.

    ``sections_from``: another YAML file whose top-level sections replace the recipe's (e.g. an
    evaluation file's ``callbacks:``); its problems are reported at its own lines.
    """
    problems: list[Problem] = []  # duplicate keys: reported with everything validation finds
    node = load_yaml_file(str(path), problems)
    if sections_from is not None:
        replace_sections(node, load_yaml_file(str(sections_from), problems), str(sections_from))
    try:
        apply_overrides(node, overrides)
        recipe = recipe_from_node(node, registry)
    except RecipeError as exc:
        raise RecipeError(problems + exc.problems) from None
    if problems:
        raise RecipeError(problems)
    recipe.source = str(path)
    return recipe


def replace_sections(node: Node, other: Node, file: str) -> None:
    if not isinstance(other.value, dict):
        raise RecipeError([Problem(file, other.line, other.col, "", "must be a mapping of recipe sections (e.g. callbacks:)")])
    for key, section in other.value.items():
        node.value[key] = section
        node.key_positions[key] = other.key_positions.get(key, (section.line, section.col))


def recipe_from_node(node: Node, registry: Registry | None = None) -> Recipe:
    validator = Validator(default_registry() if registry is None else registry)
    recipe = validator.check(node, Recipe, "")
    if validator.problems or recipe is INVALID:
        raise RecipeError(validator.problems)
    return recipe


def resolved(recipe: Recipe) -> dict:
    """The recipe with every default filled in, as plain data (written to the run folder)."""

    def plain(value):
        if isinstance(value, ComponentSpec):
            return value.plain()
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(recipe)
