"""Backbones: every timm model as ``timm/<model name>``, giving pooled features (no classifier).

The names are offered as a lazy namespace: timm (and with it torch and torchvision) is imported only
when a recipe, ``clrun.create`` or a listing pattern reaches into ``timm/``, and only the models asked
for become components. ``cl-run --help``, ``cl-run components`` and ``cl-run plugins`` import none of it.
"""

from __future__ import annotations

import functools

from clrun import Component, LazyComponents, hookimpl


def timm_model_names() -> list[str]:
    """Every model name timm knows (``timm.list_models()``)."""
    import timm  # here, not at the top: only a lookup in timm/ pays for importing timm (seconds)

    return timm.list_models()


def timm_backbone(model_name: str) -> Component:
    """The backbone component ``timm/<model_name>``."""
    from clrun.plugins.backbones.timm_backbone import create_timm_backbone  # imports timm: on first use only, as above

    return Component("backbone", f"timm/{model_name}", functools.partial(create_timm_backbone, model_name),
                     f"timm model {model_name}")


@hookimpl
def clrun_components() -> list[LazyComponents]:
    return [LazyComponents("backbone", "timm", timm_model_names, timm_backbone,
                           "any timm model (timm.list_models()), classifier removed: pooled features")]
