"""Token maps for the report of a run whose backbone offers tokens (``clrun.tokens``, e.g. a timm ViT):
the picture users check first for self-distilled vision transformers.

For a few fixed training images, without augmentation: the first three principal components of the
patch tokens (computed over those images' patches together, each scaled to [0, 1], shown as RGB: parts
of objects that the model represents alike get alike colours) and, when the backbone offers
``prefix_attention``, how its class token attends to each patch in the last block, per head.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from clrun.health.monitor import fixed_sample
from clrun.hookspecs import hookimpl
from clrun.space import leading_components
from clrun.storage import write_atomic
from clrun.tokens import offers_tokens

IMAGES = 4


def principal_components(patches: Tensor, grid: tuple[int, int], k: int = 3) -> np.ndarray:
    """``(N, rows, cols, k)`` in [0, 1]: the top ``k`` principal components of every patch token of the
    ``N`` images, fitted over all of them, each component min-max scaled."""
    n, _, width = patches.shape
    components = leading_components(patches.reshape(-1, width), k)
    low, high = components.min(dim=0).values, components.max(dim=0).values
    scaled = (components - low) / (high - low).clamp_min(1e-12)
    return scaled.reshape(n, grid[0], grid[1], -1).float().numpy()


class TokenMaps:
    """A built-in run callback (rank 0): at the end of a run, the maps above into the run folder's
    file ``RunFolder.token_maps`` (arrays ``images`` (N, C, H, W) uint8, ``pca`` (N, rows, cols, 3) and, when
    offered, ``attention`` (N, heads, rows, cols)), which the report draws."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    @hookimpl
    def clrun_run_end(self, run, metrics: dict[str, float]) -> None:
        backbone = run.network.backbone
        if not offers_tokens(backbone):
            return
        # The first images of the health monitor's fixed sample: the same in every run of the recipe.
        images = fixed_sample(self.dataset, self.seed, min(IMAGES, len(self.dataset)))
        x = run.preprocess(images.to(run.device))
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                tokens = backbone.forward_tokens(x)
                maps = {"images": images.numpy(), "pca": principal_components(tokens.patches.float().cpu(), tokens.grid)}
                if callable(getattr(backbone, "prefix_attention", None)):
                    attention = backbone.prefix_attention(x).float().cpu()
                    maps["attention"] = attention.reshape(len(images), -1, *tokens.grid).numpy()
        finally:
            backbone.train(was_training)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **maps)
        write_atomic(run.folder.token_maps, buffer.getvalue())
