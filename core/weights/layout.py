"""What a weights layout is: how one family of weight files (a training script's checkpoint, a released
encoder) holds the networks and parts that a recipe's ``init:`` section loads.

A layout is a ``weights_layout`` component: its factory takes no arguments and returns an object with the
methods of ``WeightsLayout``. cl-run reads the file itself (``clrun.weights.files``: safetensors, or a
``torch.save`` pickle read without running code) and asks each layout whether it recognizes what it holds;
the layout then hands over the tensors of each part under the names the part's module expects:

* ``backbone``: the names of the *original model* (a timm ViT's, or the official repository's own
  ``VisionTransformer``'s) without wrapper prefixes (``module.``, ``backbone.``); the backbone converts
  them to its own with its ``adapt_state_dict(state)`` when it has one (timm's checkpoint filter:
  register tokens, position embeddings resampled to the recipe's image size).
* ``projector``, ``predictor``, ``token_head``: the names of cl-run's own head modules (a plugin's head
  names, e.g. a weight-normalized layer's ``last_layer.parametrizations.weight.original1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

PARTS: tuple[str, ...] = ("backbone", "projector", "predictor", "token_head")
"""The parts of the online network that ``init:`` loads (the target is loaded from a file's teacher)."""


@dataclass
class WeightsFile:
    """A weight file as read, nothing of it executed.

    source:   the recipe's words for it (a path or a hub repository).
    path:     the file read (for a folder in timm's layout, its ``model.safetensors``).
    content:  what it holds: for safetensors a flat ``{name: tensor}``; for a pickle the nested dicts,
              lists and tensors, with the few harmless objects allowed (``argparse.Namespace``, read as
              one; see ``clrun.weights.safe_pickle``).
    metadata: text beside the tensors: a safetensors header's metadata, a timm folder's ``config.json``
              (parsed), a cl-run encoder's recipe.
    sha256:   of the file's bytes (the run folder, the export and the report record it).
    revision: a hub download's commit, else None.
    """

    source: str
    path: Path
    content: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    revision: str | None = None


@dataclass
class Trained:
    """What the weights were trained with, as far as the file says (None: not said). ``cl-run check`` and
    the run's plan warn where the recipe differs.

    mean, std:       the input normalization (per channel).
    image_size:      the global crops' side in pixels.
    patch_size:      a ViT's patch side.
    register_tokens: a ViT's register tokens.
    licence:         the weights' licence, carried into exports (e.g. "Apache-2.0", "CC-BY-NC-4.0").
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_size: int | None = None
    patch_size: int | None = None
    register_tokens: int | None = None
    licence: str | None = None


@runtime_checkable
class WeightsLayout(Protocol):
    """One family of weight files. Methods are called in this order: ``recognizes`` (on every registered
    layout until one says yes, unless the recipe names the layout), then ``networks``, ``parts``, ``trained``."""

    def recognizes(self, file: WeightsFile) -> bool:
        """Whether ``file`` is of this family (by its keys, never by its name)."""
        ...

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        """The networks the file holds, the one to load by default first: ``("teacher", "student")`` for a
        self-distillation checkpoint (the teacher is what the papers evaluate), ``("model",)`` for one network."""
        ...

    def parts(self, file: WeightsFile, network: str) -> dict[str, dict[str, "Tensor"]]:
        """The tensors of each part of ``network`` it holds, by part (``PARTS``), named as this module's
        docstring says. A part the file does not hold is absent."""
        ...

    def trained(self, file: WeightsFile) -> Trained:
        """What the weights were trained with, as far as the file says."""
        ...
