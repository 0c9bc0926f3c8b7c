"""What the recipe needs for each step output a loss or callback may read: the ``masking:`` section for the
masks, a ``target:`` section for the target's projections... One table, read by the build's check of a
reader's ``reads`` (``clrun.training.model.reads``) and by the error for an absent output (``clrun.Branch``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from clrun.recipe.schema import Recipe


@dataclass(frozen=True)
class Need:
    """A part of the recipe an output needs: ``what`` completes "add ..." in the error; ``met(recipe)``."""

    what: str
    met: Callable[[Recipe], bool]


PREDICTOR = Need("a `predictor:` section (a head on the online branch, e.g. name: clrun/mlp)",
                 lambda r: r.predictor is not None)
TARGET = Need("a `target:` section (a momentum target network, e.g. momentum: 0.996)", lambda r: r.target is not None)
MASKING = Need("a `masking:` section (masked global views for a backbone with patch tokens, e.g. "
               "generator: {name: clrun/block_mask})", lambda r: r.masking is not None)
SNAPSHOT = Need("a `snapshot:` in the `target:` section (a frozen, refreshed copy of the target's backbone, e.g. "
                "snapshot: {every: 10000})", lambda r: r.target is not None and r.target.snapshot is not None)
TOKEN_HEAD = Need("a `head:` in the `masking:` section (a token_head component: `cl-run components token_head`)",
                  lambda r: r.masking is not None and r.masking.head is not None)

# The recipe parts each output needs; an output not listed needs none (every recipe produces it).
NEEDS: dict[str, tuple[Need, ...]] = {
    "masks": (MASKING,),
    "online.predictions": (PREDICTOR,),
    "online.tokens": (MASKING,),
    "online.token_projections": (MASKING,),
    "online.token_predictions": (MASKING, TOKEN_HEAD),
    "target.projections": (TARGET,),
    "target.tokens": (TARGET, MASKING),
    "target.token_projections": (TARGET, MASKING),
    "target.snapshot_tokens": (TARGET, SNAPSHOT),
}


def requirement(read: str) -> str:
    """What the recipe needs for ``read``, for messages ("a `target:` section (...)")."""
    needs = NEEDS.get(read, ())
    return " and ".join(n.what for n in needs) if needs else "nothing more from the recipe"
