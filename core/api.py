"""The public functions: build one component, list components, load a recipe, train it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from clrun.component import INJECTED, Component
from clrun.errors import ComponentError
from clrun.plugin_manager import default_registry
from clrun.recipe import Recipe, load_recipe as _load_recipe
from clrun.recipe.nodes import Node
from clrun.recipe.validate import INVALID, Validator


def components(kind: str | None = None, pattern: str | None = None) -> list[Component]:
    """Registered components, optionally of one kind and matching an fnmatch pattern (``"timm/vit_*"``)."""
    return default_registry().list(kind, pattern)


def create(kind: str, name: str, **params: Any) -> Any:
    """Build one component, its arguments validated and coerced exactly like a recipe entry.

    Values the training loop would inject (a projector's ``in_dim``, an optimizer's ``params``) may be
    passed here too. Nested components are given as dicts with a ``name``.
    """
    injected = {k: params.pop(k) for k in INJECTED.get(kind, ()) if k in params}
    where = f"clrun.create({kind!r}, {name!r})"
    validator = Validator(default_registry())
    spec = validator.component(_node({"name": name, **params}, where), kind, "")
    if validator.problems or spec is INVALID:
        problems = validator.problems
        # One bad argument (a value outside its clrun.Range, say) is named, as a factory's own error is.
        argument = problems[0].path if len(problems) == 1 and problems[0].path in params else None
        raise ComponentError("\n".join(f"{where}: {p.path + ': ' if p.path else ''}{p.message}" for p in problems),
                             argument=argument)
    spec.where = where  # no file position to name for an API call
    try:
        return spec.build(**injected)
    except ComponentError as exc:
        if isinstance(exc.__cause__, ComponentError):
            raise exc.__cause__ from None  # the factory's own words; a recipe's line and column mean nothing here
        raise


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read and validate a recipe file with ``dotted.key=value`` overrides; raises RecipeError."""
    return _load_recipe(path, tuple(overrides), default_registry())


def train(recipe: Recipe | str | Path, resume: str | Path | None = None, verbose: bool = False,
          allow_changes: bool = False):
    """Train a recipe (or a recipe path); returns the finished ``Run`` (``run.folder``, ``run.summary``).
    ``resume``: a run folder or checkpoint to continue (``allow_changes``: with a recipe that changes the
    training, recorded in the run folder); ``verbose`` prints every metric each epoch."""
    # Imported here, not at the top: it imports torch, and `import clrun` (hence `cl-run --help`) must not.
    from clrun.training.loop import train as _train

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return _train(recipe, resume=resume, verbose=verbose, allow_changes=allow_changes)


def _node(value: Any, file: str) -> Node:
    if isinstance(value, dict):
        return Node({str(k): _node(v, file) for k, v in value.items()}, file, 1, 1)
    if isinstance(value, (list, tuple)):
        return Node([_node(v, file) for v in value], file, 1, 1)
    return Node(value, file, 1, 1)
