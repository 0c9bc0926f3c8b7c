"""cl-run: contrastive and self-supervised representation learning from YAML recipes.

The public API (everything a recipe user or plugin author needs) is imported from here:

    clrun.hookimpl                 decorator for plugin hook implementations
    clrun.Component                what a plugin offers (kind, name, factory, summary)
    clrun.Nested                   type-hint marker for a factory argument that is itself a component
    clrun.create(kind, name, **p)  build one component, validated like a recipe entry
    clrun.components(kind=None)    the registered components
    clrun.load_recipe(path, overrides=())
    clrun.train(recipe)
    clrun.distributed              rank, world size and collectives for losses (identities in one process)
"""

__version__ = "0.1.0"  # before the imports: the plugin manager reads it

from clrun import distributed
from clrun.api import components, create, load_recipe, train
from clrun.component import KINDS, Component, Nested
from clrun.errors import ComponentError, DataError, DataNotFoundError, PluginLoadError, TrainingHalted, UserError
from clrun.hookspecs import hookimpl
from clrun.training.outputs import StepOutputs
from clrun.training.run import Run


__all__ = [
    "KINDS",
    "Component",
    "Nested",
    "hookimpl",
    "create",
    "components",
    "load_recipe",
    "train",
    "distributed",
    "StepOutputs",
    "Run",
    "UserError",
    "DataError",
    "DataNotFoundError",
    "ComponentError",
    "PluginLoadError",
    "TrainingHalted",
    "__version__",
]
