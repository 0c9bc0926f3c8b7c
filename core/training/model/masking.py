"""A recipe's ``masking:`` section at work: masks drawn per batch for the online network's global views."""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

from clrun.errors import ComponentError
from clrun.masks import Masks
from clrun.recipe.schema import Recipe
from clrun.tokens import offers_tokens


class Masking:
    """The mask generator and how hidden patches are treated (``drop``: left out; else: the mask token)."""

    def __init__(self, generator: Callable[..., Masks], drop: bool) -> None:
        self.generator, self.drop = generator, drop

    def draw(self, backbone: nn.Module, views: list[Tensor], is_global: list[bool]) -> list[Optional[Masks]]:
        """Masks for every global view (over its patch grid, on its device), None for the local ones. They
        are drawn from torch's default random stream, which a resumed run restores."""
        return [self.generator(len(v), backbone.token_grid(*v.shape[-2:]), v.device) if g else None
                for v, g in zip(views, is_global)]


def build_masking(recipe: Recipe, backbone: nn.Module, generator: Callable[..., Masks]) -> Masking:
    """The ``masking:`` section's ``Masking``, once the backbone and the generator are known to make the
    masked views it asks for; an error points at that section."""
    section = recipe.masking
    where = section.generator.where
    if not offers_tokens(backbone):
        raise ComponentError(
            f"{where}: error: masking: the backbone {recipe.backbone.name} has no patch tokens (a CNN?); masked "
            f"views need a backbone that offers them, e.g. backbone.name: timm/vit_small_patch16_224")
    if section.hidden == "mask_token" and getattr(backbone, "pretext_mask_token", None) is None:
        raise ComponentError(
            f"{where}: error: masking.hidden: mask_token replaces hidden patches by the backbone's mask token, and "
            f"{recipe.backbone.name} has none: set backbone.mask_token: true (or masking.hidden: drop)")
    if section.hidden == "drop" and not getattr(generator, "equal_counts", False):
        raise ComponentError(
            f"{where}: error: masking.hidden: drop needs the same visible count in every image, and "
            f"{section.generator.name} does not promise it (equal_counts); use hidden: mask_token, or a generator "
            f"with equal counts (e.g. clrun/random_mask)")
    return Masking(generator, section.hidden == "drop")
