"""A timm model as a backbone: pooled features (no classifier), options for gray and small images, local weights.

``clrun.plugins.backbones.components`` offers it for every timm model name, as ``timm/<model name>``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Optional

import timm
from timm.models import group_parameters
from timm.models._manipulate import adapt_input_conv
from torch import Tensor, nn

from clrun import UserError
from clrun.reading import load_weights
from clrun.plugins.backbones.fixed_positions import use_sincos_positions
from clrun.plugins.backbones.timm_hub import offer_hub_config
from clrun.plugins.backbones.vit_tokens import add_tokens


def create_timm_backbone(
    model_name: str,
    in_chans: int = 3,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    small_image_stem: bool = False,
    drop_path_rate: Optional[float] = None,
    img_size: Optional[int] = None,
    model_args: Optional[dict] = None,
    mask_token: bool = False,
    sincos_pos_embed: bool = False,
) -> nn.Module:
    """A timm model with its classifier removed (``num_classes=0``): ``forward(x)`` gives (B, F) features.

    in_chans:          1 for gray images (Fashion-MNIST), 3 for RGB.
    pretrained:        download timm's weights (needs internet; offline, use ``checkpoint_path``).
    checkpoint_path:   a local .safetensors or .pth state dict of this model, loaded with strict keys.
    small_image_stem:  CIFAR-style stem for ResNet-family models on 32px images: a 3x3 stride-1 first
                       convolution and no max-pool, so small images keep their resolution.
    img_size:          input size for models that fix it (ViTs default to 224).
    model_args:        any other keyword arguments of the timm model, e.g. a small ViT for 28px images:
                       {patch_size: 4, embed_dim: 192, depth: 4, num_heads: 3, dynamic_img_size: true}
                       (dynamic_img_size: one ViT takes global and local crops of different sizes).
    mask_token:        a learned token that replaces hidden patches (iBOT's masked patch modelling);
                       vision transformers only.
    sincos_pos_embed:  fixed 2-D sine-cosine position embeddings, not trained (MAE's and I-JEPA's), instead of
                       timm's learned ones; vision transformers only. A checkpoint_path or init: still loads
                       its own table; downloaded weights' table (pretrained) is replaced.

    A timm vision transformer also offers ``forward_tokens`` (``clrun.tokens``): its class, register and
    patch tokens, with hidden patches replaced by the mask token or dropped.
    """
    kwargs: dict = {"num_classes": 0, "in_chans": in_chans}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if img_size is not None:
        kwargs["img_size"] = img_size
    clashing = sorted(set(model_args or {}) & {"num_classes", "in_chans", "img_size", "drop_path_rate", "pretrained"})
    if clashing:
        raise UserError(f"timm/{model_name}: model_args: {', '.join(clashing)} have their own backbone setting "
                        f"(num_classes is always 0: the backbone gives features); set them there")
    kwargs.update(model_args or {})
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except TypeError as exc:  # an option this model family does not take (e.g. img_size on a ResNet)
        raise UserError(f"timm/{model_name}: {exc}") from exc
    except Exception as exc:
        if not pretrained:
            raise
        raise UserError(
            f"timm/{model_name}: pretrained weights could not be downloaded ({type(exc).__name__}: {exc}); "
            f"without internet, set backbone.pretrained=false and backbone.checkpoint_path=/path/to/weights.safetensors"
        ) from exc
    if small_image_stem:
        _use_small_image_stem(model, model_name, in_chans)
    if sincos_pos_embed:
        use_sincos_positions(model, model_name)
    if checkpoint_path is not None:
        _load_checkpoint(model, model_name, checkpoint_path)
    add_tokens(model, model_name, mask_token)  # after loading: timm's checkpoints have no mask token
    model.adapt_state_dict = types.MethodType(_adapt_state_dict, model)  # for a recipe's init: (clrun.weights)
    offer_hub_config(model, model_name, kwargs, small_image_stem)  # for `cl-run export --hub-folder`
    if hasattr(model, "group_matcher"):  # its layers, for layer-wise learning-rate decay (params.layer_decay)
        model.layer_ids = types.MethodType(_layer_ids, model)
    return model


def _adapt_state_dict(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Foreign weights of this model's family in the model's own names and shapes, by timm's rules: the
    family's ``checkpoint_filter_fn`` (a ViT's: DINOv2's register tokens and SwiGLU names, I-JEPA's
    ``module.`` prefix, position embeddings resampled to this model's image size, patch embeddings to its
    patch size), the first convolution summed or repeated for another number of input channels (timm's
    ``adapt_input_conv``: RGB weights on gray images), and a released mask token (DINOv2's, iBOT's) into the
    mask token the model was given for masked pre-training."""
    mask = state.get("mask_token", state.pop("masked_embed", None))  # DINOv2's and iBOT's names for it
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if convert is not None:
        state = convert(state, model)
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    for name in [first_conv] if isinstance(first_conv, str) else (first_conv or ()):
        weight, own = state.get(f"{name}.weight"), model.state_dict().get(f"{name}.weight")
        if weight is not None and own is not None and weight.dim() == 4 and weight.shape[1] != own.shape[1]:
            state[f"{name}.weight"] = adapt_input_conv(own.shape[1], weight)
    state.pop("mask_token", None)  # kept only where the model has a mask token of that width
    own_mask = getattr(model, "pretext_mask_token", None)
    if mask is not None and own_mask is not None and mask.numel() == own_mask.numel():
        state["pretext_mask_token"] = mask.reshape(own_mask.shape)
    return state


def _layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer (0 on the input side), by timm's own grouping of the model."""
    return group_parameters(model, model.group_matcher(coarse=False), reverse=True)


def _use_small_image_stem(model: nn.Module, model_name: str, in_chans: int) -> None:
    conv1 = getattr(model, "conv1", None)
    if not isinstance(conv1, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise UserError(
            f"timm/{model_name}: small_image_stem needs a ResNet-style model (a single conv1 and a maxpool); "
            f"remove backbone.small_image_stem or pick e.g. timm/resnet18"
        )
    model.conv1 = nn.Conv2d(in_chans, conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _load_checkpoint(model: nn.Module, model_name: str, path: str) -> None:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"timm/{model_name}: checkpoint_path {path} does not exist")
    state = load_weights(file, f"timm/{model_name}: checkpoint_path")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"timm/{model_name}: {path} does not match the model: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]} (is it a checkpoint of this model with these options?)"
        )
