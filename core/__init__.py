"""cl-run: contrastive and self-supervised representation learning from YAML recipes.

The public API (everything a recipe user or plugin author needs) is imported from here:

    clrun.hookimpl                 decorator for plugin hook implementations
    clrun.Component                what a plugin offers (kind, name, factory, summary)
    clrun.LazyComponents           a namespace of components resolved on first use (every timm model)
    clrun.Nested                   type-hint marker for a factory argument that is itself a component
    clrun.Range                    type-hint marker for an argument's limits and hint (checked in recipes)
    clrun.checked                  decorator: a component checks its Ranges on direct construction too
    clrun.name_of(component)       a component's registered name, for its messages
    clrun.StepOutputs, clrun.Branch  what a loss receives: the views, masks and each network's outputs
    clrun.Masks                    what a mask generator returns: visible patches and patches to predict
    clrun.Tokens, clrun.offers_tokens  a ViT backbone's tokens (``backbone.forward_tokens``)
    clrun.patchify                 images as per-patch pixel vectors (a pixel target for masked modelling)
    clrun.sincos_position_embeddings  fixed 2-D sine-cosine position embeddings for a patch grid
    clrun.create(kind, name, **p)  build one component, validated like a recipe entry
    clrun.components(kind=None)    the registered components
    clrun.load_recipe(path, overrides=())
    clrun.train(recipe)
    clrun.distributed              rank, world size and collectives for losses (identities in one process)
    clrun.loss_kit                 helpers every loss uses (autocast off, view and argument checks)
    clrun.Evaluator, clrun.Stateful  the callback contract (see clrun.callback)
    clrun.RunFolder                a run folder's layout: one property per file
    clrun.Stream                   base class of a streamed data set (shards), split over processes and
                                   loader workers and resumable mid-epoch
    clrun.space                    record the embedding map and retrieval grid the report draws (evaluators)
    clrun.testing                  contract checks for a plugin's components (import it explicitly)

``import clrun`` does not import torch: the names that need it (``Run``, ``StepOutputs``, ``Branch``,
``Stream``, ``distributed``, ``space``) are imported on first access (PEP 562), so ``cl-run --help`` and plugin discovery
answer without paying torch's import time.
"""

from __future__ import annotations

import importlib
from typing import Any

from clrun.api import components, create, load_recipe, train
from clrun.callback import Evaluator, Stateful
from clrun.checked import checked, name_of
from clrun.component import KINDS, Component, LazyComponents, Nested
from clrun.errors import (
    ComponentBuildError,
    ComponentError,
    ComponentFailure,
    DataError,
    DataNotFoundError,
    PluginLoadError,
    TrainingHalted,
    UserError,
)
from clrun.hookspecs import hookimpl
from clrun.masks import Masks
from clrun.ranges import Range
from clrun.tokens import Tokens, offers_tokens, patchify, sincos_position_embeddings
from clrun.run_folder import RunFolder
from clrun.version import __version__

# Public names that import torch, by the module that defines them (None: the name is that module).
_IMPORTED_ON_FIRST_ACCESS: dict[str, tuple[str, str | None]] = {
    "distributed": ("clrun.distributed", None),
    "loss_kit": ("clrun.loss_kit", None),
    "StepOutputs": ("clrun.training.model.outputs", "StepOutputs"),
    "Branch": ("clrun.training.model.branch", "Branch"),
    "Run": ("clrun.training.run", "Run"),
    "Stream": ("clrun.streams", "Stream"),
    "space": ("clrun.space", None),
}


def __getattr__(name: str) -> Any:
    if name not in _IMPORTED_ON_FIRST_ACCESS:
        raise AttributeError(f"module 'clrun' has no attribute {name!r}")
    module_name, attribute = _IMPORTED_ON_FIRST_ACCESS[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later accesses are plain attribute lookups
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_IMPORTED_ON_FIRST_ACCESS))


__all__ = [
    "KINDS",
    "Component",
    "LazyComponents",
    "Nested",
    "Range",
    "checked",
    "name_of",
    "Masks",
    "Tokens",
    "offers_tokens",
    "patchify",
    "sincos_position_embeddings",
    "hookimpl",
    "create",
    "components",
    "load_recipe",
    "train",
    "distributed",
    "loss_kit",
    "Evaluator",
    "Stateful",
    "RunFolder",
    "StepOutputs",
    "Branch",
    "Run",
    "Stream",
    "space",
    "UserError",
    "DataError",
    "DataNotFoundError",
    "ComponentError",
    "ComponentBuildError",
    "ComponentFailure",
    "PluginLoadError",
    "TrainingHalted",
    "__version__",
]
