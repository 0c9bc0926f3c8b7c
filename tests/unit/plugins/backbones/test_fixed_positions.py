"""``sincos_pos_embed: true``: a timm ViT's position embeddings as MAE's and I-JEPA's fixed 2-D sin-cos table
(compared with a NumPy transcription of MAE's ``get_2d_sincos_pos_embed``), never trained, kept in the exported
encoder, and refused with a message on a model without position embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clrun
from clrun import UserError


def mae_table(dim: int, grid: int, prefix: int) -> np.ndarray:
    """MAE's util/pos_embed.py (float64, then float32 as models_mae.py copies it), ``prefix`` zero rows first."""
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32), indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one_d(positions):
        angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([one_d(cols), one_d(rows)], axis=1)
    return np.concatenate([np.zeros([prefix, dim]), table]).astype(np.float32)


def vit(**options):
    return clrun.create("backbone", "timm/vit_tiny_patch16_224", in_chans=1, img_size=28, sincos_pos_embed=True,
                        model_args={"patch_size": 7, "embed_dim": 48, "depth": 1, "num_heads": 3, **options})


@pytest.mark.parametrize("options, prefix", [({}, 1), ({"class_token": False, "global_pool": "avg"}, 0),
                                             ({"reg_tokens": 2, "no_embed_class": True}, 0)])
def test_the_table_is_maes_and_is_not_trained(options, prefix):
    model = vit(**options)
    assert torch.equal(model.pos_embed[0], torch.from_numpy(mae_table(48, 4, prefix)))
    assert not model.pos_embed.requires_grad
    assert "pos_embed" not in {name for name, p in model.named_parameters() if p.requires_grad}
    assert "pos_embed" in model.state_dict()  # exported with the encoder: timm loads it as it is


def test_another_image_size_resamples_the_table_as_timm_does():
    model = vit(dynamic_img_size=True)
    assert model(torch.randn(2, 1, 42, 42)).shape == (2, 48)


def test_a_model_without_position_embeddings_is_refused():
    with pytest.raises(UserError) as error:
        clrun.create("backbone", "timm/resnet18", sincos_pos_embed=True)
    assert str(error.value) == (
        "timm/resnet18: sincos_pos_embed needs a vision transformer with absolute position embeddings (pos_embed); "
        "remove backbone.sincos_pos_embed or pick e.g. timm/vit_base_patch16_224")
