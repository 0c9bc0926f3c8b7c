"""MAE's pre-training checkpoints (``clrun/mae``): encoder and decoder."""

from __future__ import annotations

from typing import Optional

from clrun.plugins.weights.official.common import State, argument, as_state, check_network, unwrapped, vit_trained
from clrun.plugins.weights.official.heads import token_transformer
from clrun.weights.layout import Trained, WeightsFile


class MAELayout:
    """MAE's pre-training checkpoints (He et al. 2022; facebookresearch/mae, CC-BY-NC-4.0): ``checkpoint-
    <epoch>.pth`` of util/misc.py:295-309, ``{"model", "optimizer", "epoch", "scaler", "args"}`` with
    ``model`` the ``MaskedAutoencoderViT``'s state dict (models_mae.py:24-63, not DDP-wrapped:
    ``model_without_ddp``), encoder and decoder; also the released visualization weights
    (``mae_visualize_vit_large.pth``, ``{"model"}`` with the decoder). Recognized by the decoder's
    ``decoder_embed`` and ``decoder_pred``. The released encoders (``mae_pretrain_vit_base.pth``: ``{"model":
    encoder}``) are plain ViT state dicts, left to the generic layout.

    Network: ``("model",)``. Parts: ``backbone``, the encoder (``cls_token``, ``pos_embed``: fixed sin-cos,
    models_mae.py:37, kept as the ViT's position embeddings, ``patch_embed``, ``blocks``, ``norm``: timm's
    names); ``token_head``, the decoder in ``clrun/mae_decoder``'s names (``decoder_embed`` -> ``embed``,
    ``mask_token`` -> ``mask_token``, ``decoder_blocks`` -> ``blocks``, ``decoder_norm`` -> ``norm``,
    ``decoder_pred`` -> ``out``). Left out: ``decoder_pos_embed`` (fixed sin-cos, models_mae.py:51, which
    ``MAEDecoder`` computes itself, the class token's position zero as there).

    Trained: image size ``args.input_size`` (main_pretrain.py:50, 224), patch size from the patch embedding,
    ImageNet mean and std (main_pretrain.py:127), no registers, CC-BY-NC-4.0.
    """

    licence = "CC-BY-NC-4.0"

    @staticmethod
    def _model(file: WeightsFile) -> Optional[State]:
        model = as_state(file.content.get("model"))
        return unwrapped(model) if model is not None else None

    def recognizes(self, file: WeightsFile) -> bool:
        model = self._model(file)
        return model is not None and "decoder_embed.weight" in model and "decoder_pred.weight" in model

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("model",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        check_network(file, network, self.networks(file))
        model = self._model(file)
        decoder = {name: value for name, value in model.items()
                   if name.startswith("decoder_") or name == "mask_token"}
        backbone = {name: value for name, value in model.items() if name not in decoder}
        return {"backbone": backbone, "token_head": token_transformer(decoder, "decoder_", "decoder_pos_embed")}

    def trained(self, file: WeightsFile) -> Trained:
        size = argument(file.content.get("args"), "input_size")
        return vit_trained(self.parts(file, "model")["backbone"], self.licence,
                            image_size=size if isinstance(size, int) else None)
