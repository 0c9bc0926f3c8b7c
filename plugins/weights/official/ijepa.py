"""I-JEPA's checkpoints (``clrun/ijepa``): target encoder, context encoder and predictor."""

from __future__ import annotations

from clrun.plugins.weights.official.common import State, as_state, check_network, has_prefix, unwrapped, vit_trained
from clrun.plugins.weights.official.heads import token_transformer
from clrun.weights.layout import Trained, WeightsFile


class IJEPALayout:
    """I-JEPA's checkpoints (Assran et al. 2023; facebookresearch/ijepa, CC-BY-NC-4.0): ``jepa-latest.pth.tar``
    and the released ``IN1K-vit.h.14-300e.pth.tar`` etc., src/train.py:248-260: ``{"encoder", "predictor",
    "target_encoder", "opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr"}``, each network
    DDP-wrapped (``module.``, train.py:221-223). Recognized by ``encoder`` and ``target_encoder``.

    Networks: ``teacher``, the target encoder (the one the paper evaluates; the repository has no evaluation
    code), then ``student``, the context
    encoder with the predictor. Parts: ``backbone``, the ``VisionTransformer`` (src/models/vision_transformer.
    py:329-380: timm's names, no class token; ``pos_embed``, fixed sin-cos, kept as the ViT's position
    embeddings: a timm ViT with ``class_token: false``, ``global_pool: avg``, ``fc_norm: false`` (the final
    ``norm`` on every token, where I-JEPA has it) and ``sincos_pos_embed: true``); for the student also
    ``token_head``, the ``VisionTransformerPredictor`` (vision_transformer.py:220-258) in
    ``clrun/jepa_predictor``'s names (``predictor_embed`` -> ``embed``, ``mask_token`` -> ``mask_token``,
    ``predictor_blocks`` -> ``blocks``, ``predictor_norm`` -> ``norm``, ``predictor_proj`` -> ``out``). Left
    out: ``predictor_pos_embed`` (fixed sin-cos, vision_transformer.py:244-249, which ``JEPAPredictor``
    computes itself).

    Trained: the checkpoint holds no config (configs/*.yaml): patch and image size from the patch and
    position embeddings (224 px, patch 14 for ViT-H/14), ImageNet mean and std (src/transforms.py:26-27), no
    registers, CC-BY-NC-4.0.
    """

    licence = "CC-BY-NC-4.0"

    def recognizes(self, file: WeightsFile) -> bool:
        encoder, target = (as_state(file.content.get(key)) for key in ("encoder", "target_encoder"))
        return (encoder is not None and target is not None and has_prefix(unwrapped(encoder), "blocks.")
                and has_prefix(unwrapped(target), "blocks."))

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("teacher", "student")

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        check_network(file, network, self.networks(file))
        if network == "teacher":
            return {"backbone": unwrapped(as_state(file.content["target_encoder"]))}
        parts = {"backbone": unwrapped(as_state(file.content["encoder"]))}
        predictor = as_state(file.content.get("predictor"))
        if predictor is not None:
            parts["token_head"] = token_transformer(unwrapped(predictor), "predictor_", "predictor_pos_embed")
        return parts

    def trained(self, file: WeightsFile) -> Trained:
        return vit_trained(self.parts(file, "teacher")["backbone"], self.licence, prefix_tokens=0)
