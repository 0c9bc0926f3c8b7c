"""The heads the official checkpoints share, in the names of cl-run's head modules: DINO's projection head
(DINO, iBOT, DINOv2) and the token transformers (MAE's decoder, I-JEPA's predictor)."""

from __future__ import annotations

from clrun.plugins.weights.official.common import State


def dino_head(state: State) -> State:
    """DINO's projection head (dino vision_transformer.py:257-285, its copies in iBOT's models/head.py:65-110
    and DINOv2's dinov2/layers/dino_head.py) in ``clrun/dino_head``'s names.

    The MLP keeps its names (the same ``Linear``, [``BatchNorm1d``], ``GELU`` order, so the same indices), but
    a one-layer MLP, a bare ``Linear`` there (``mlp.weight``), is ``mlp.0`` here. The prototypes' weight
    normalization of ``torch.nn.utils.weight_norm`` (dim 0: ``weight_g`` ``(K, 1)``, ``weight_v`` ``(K, B)``)
    becomes that of ``torch.nn.utils.parametrizations.weight_norm``, the same shapes: ``weight_g`` ->
    ``last_layer.parametrizations.weight.original0``, ``weight_v`` -> ``...original1``. Left out: iBOT's patch
    prototypes (``last_layer2``, ``mlp2``, ``last_norm2``; cl-run's head serves class and patch tokens, iBOT's
    ``shared_head``) and iBOT's optional output norms (``last_norm``). No head without a last layer (iBOT with
    ``bottleneck_dim`` 0) is given: an empty dict."""
    out: State = {}
    for name, value in state.items():
        if name in ("mlp.weight", "mlp.bias"):
            out["mlp.0." + name[4:]] = value
        elif name.startswith("mlp."):
            out[name] = value
        elif name == "last_layer.weight_g":
            out["last_layer.parametrizations.weight.original0"] = value
        elif name == "last_layer.weight_v":
            out["last_layer.parametrizations.weight.original1"] = value
        elif name.startswith("last_layer.parametrizations.weight.original"):  # saved with the newer API
            out[name] = value
    if not any(name.startswith("last_layer.") for name in out):
        return {}
    return out


def token_transformer(state: State, prefix: str, pos_embed: str) -> State:
    """MAE's decoder or I-JEPA's predictor in the names of cl-run's token heads (``clrun.plugins.heads.
    token_heads.TokenTransformer``): ``<prefix>embed`` -> ``embed``, ``mask_token`` ``(1, 1, E)`` ->
    ``mask_token`` ``(E,)``, ``<prefix>blocks`` -> ``blocks`` (the same timm-style block: ``norm1``,
    ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), ``<prefix>norm`` -> ``norm``, the
    output map (MAE's ``decoder_pred``, I-JEPA's ``predictor_proj``) -> ``out``. The fixed sin-cos position
    embeddings (``pos_embed``, not trained) are left out: cl-run's heads compute the same table for the image's
    grid (``token_heads.sincos_position_embeddings``)."""
    renames = ((f"{prefix}embed.", "embed."), (f"{prefix}blocks.", "blocks."), (f"{prefix}norm.", "norm."),
               (f"{prefix}pred.", "out."), (f"{prefix}proj.", "out."))
    out: State = {}
    for name, value in state.items():
        if name == "mask_token":
            out["mask_token"] = value.reshape(-1)
            continue
        if name == pos_embed:
            continue
        for old, new in renames:
            if name.startswith(old):
                out[new + name[len(old):]] = value
                break
    return out
