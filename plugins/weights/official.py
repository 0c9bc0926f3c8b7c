"""Layouts of the official checkpoints of DINO, iBOT, DINOv2, MAE, I-JEPA and MoCo v3 (``weights_layout``
components; ``clrun.plugins.weights.components`` offers them as ``clrun/dino``, ``clrun/ibot``,
``clrun/dinov2``, ``clrun/mae``, ``clrun/ijepa``, ``clrun/mocov3``).

Each layout recognizes its family by the keys of what a file holds, never by the file's name, and the families
exclude each other. The backbone part keeps the names of the official model (a timm-style ViT for all six:
``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.<i>``, ``norm``), without the wrappers' prefixes;
the heads are renamed to cl-run's head modules (``clrun/dino_head``, ``clrun/mlp``, ``clrun/mae_decoder``,
``clrun/jepa_predictor``). A flat released backbone of DINO, iBOT or MAE (``dino_deitsmall16_pretrain.pth``,
iBOT's ``checkpoint_teacher.pth`` = ``{"state_dict": backbone}``, MAE's ``mae_pretrain_vit_base.pth`` =
``{"model": encoder}``) is a plain ViT state dict: none of these layouts claims it (the generic state-dict
layout reads it). DINOv2's released hub backbones are claimed, by their DINOv2-only key set.

Line numbers refer to the repositories at the commits named in tests/fixtures/official_weights/README.md
(facebookresearch/dino 7c446df, bytedance/ibot da316d8, facebookresearch/dinov2 b8931f7,
facebookresearch/mae efb2a80, facebookresearch/ijepa 52c1ae9, facebookresearch/moco-v3 c349e6e). Every
family trained on ImageNet-normalized images (mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor

from clrun.weights.layout import Trained, WeightsFile

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
State = dict[str, Tensor]


# ------------------------------------------------------------------------------------------------------ helpers
def _state(value: Any) -> Optional[State]:
    """``value`` as a state dict (a non-empty mapping of names to tensors), else None."""
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and isinstance(v, Tensor)
                                                    for k, v in value.items()):
        return dict(value)
    return None


def _unwrapped(state: State, prefix: str = "module.") -> State:
    """Without DistributedDataParallel's ``module.`` when every name has it."""
    if all(name.startswith(prefix) for name in state):
        return {name[len(prefix):]: value for name, value in state.items()}
    return state


def _under(state: State, prefix: str) -> State:
    """The tensors whose names start with ``prefix``, without it."""
    return {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}


def _has(state: Optional[State], prefix: str) -> bool:
    return bool(state) and any(name.startswith(prefix) for name in state)


def _argument(args: Any, name: str) -> Any:
    """An argument of a checkpoint's ``args`` (an ``argparse.Namespace``, or a dict), else None."""
    if isinstance(args, Mapping):
        return args.get(name)
    return getattr(args, name, None)


def _select(file: WeightsFile, network: str, networks: tuple[str, ...]) -> None:
    if network not in networks:
        raise ValueError(f"{file.source}: holds the networks {', '.join(networks)}, not {network!r}")


def _vit_geometry(backbone: State, prefix_tokens: int) -> tuple[Optional[int], Optional[int]]:
    """``(image_size, patch_size)`` a ViT's weights were made for: the patch embedding's kernel, and the side
    of the position embeddings' square grid (``prefix_tokens`` of them for class tokens) times it."""
    kernel = backbone.get("patch_embed.proj.weight")
    if kernel is None or kernel.ndim != 4 or kernel.shape[-1] != kernel.shape[-2]:
        return None, None
    patch = int(kernel.shape[-1])
    positions = backbone.get("pos_embed")
    if positions is None or positions.ndim != 3:
        return None, patch
    side = math.isqrt(positions.shape[1] - prefix_tokens)
    if side * side != positions.shape[1] - prefix_tokens:
        return None, patch
    return side * patch, patch


def _vit_trained(backbone: State, licence: str, prefix_tokens: int = 1, image_size: Optional[int] = None,
                 patch_size: Optional[int] = None) -> Trained:
    size, patch = _vit_geometry(backbone, prefix_tokens)
    vit = (patch or patch_size) is not None
    registers = backbone.get("register_tokens")
    return Trained(mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size or size, patch_size=patch or patch_size,
                   register_tokens=int(registers.shape[1]) if registers is not None else (0 if vit else None),
                   licence=licence)


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


def moco_mlp(state: State) -> State:
    """A MoCo v3 MLP (moco/builder.py:36-53, ``_build_mlp``: bias-free ``Linear`` layers, each but the last
    followed by ``BatchNorm1d`` and ``ReLU``, the last by ``BatchNorm1d(affine=False)`` where ``last_bn``) in
    ``clrun/mlp``'s names (``MLPProjector``, whose layers sit at the same indices of its ``net`` with
    ``batch_norm``, and with ``last_batch_norm`` where the official MLP ends in BatchNorm). cl-run's ``Linear``
    layers have biases except the last before an output BatchNorm; MoCo v3's none: those biases are given as
    zeros, which computes exactly what the bias-free layer does."""
    out: State = {f"net.{name}": value for name, value in state.items()}
    linear = sorted(int(name.split(".")[0]) for name, value in state.items()
                    if name.endswith(".weight") and value.ndim == 2)
    for index in linear:
        if f"{index}.bias" in state:
            continue
        if index == linear[-1] and f"{index + 1}.running_mean" in state:
            continue  # cl-run's last Linear before last_batch_norm has no bias either
        weight = state[f"{index}.weight"]
        out[f"net.{index}.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return out


# ------------------------------------------------------------------------------------------------ DINO and iBOT
def _self_distillation(content: Mapping[str, Any]) -> Optional[str]:
    """``"dino"`` or ``"ibot"`` for a checkpoint of ``MultiCropWrapper`` (backbone + head) teachers and
    students, by its heads: iBOT's have patch prototypes (``last_layer2``, or ``mlp2`` without a bottleneck,
    models/head.py:160-177) and its checkpoint an ``ibot_loss``; DINO's neither."""
    teacher = _state(content.get("teacher"))
    if teacher is None:
        return None
    teacher = _unwrapped(teacher)
    if not (_has(teacher, "backbone.") and _has(teacher, "head.")):
        return None
    student = _state(content.get("student"))
    heads = [name for name in [*teacher, *_unwrapped(student or {})] if name.startswith("head.")]
    if "ibot_loss" in content or any(name.startswith(("head.last_layer2.", "head.mlp2.")) for name in heads):
        return "ibot"
    return "dino"


class _SelfDistillationLayout:
    family = ""
    licence = ""

    def recognizes(self, file: WeightsFile) -> bool:
        return _self_distillation(file.content) == self.family

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("teacher", "student") if _state(file.content.get("student")) is not None else ("teacher",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        _select(file, network, self.networks(file))
        state = _unwrapped(_state(file.content[network]))
        parts = {"backbone": _under(state, "backbone."), "projector": dino_head(_under(state, "head."))}
        return {part: tensors for part, tensors in parts.items() if tensors}

    def trained(self, file: WeightsFile) -> Trained:
        args = file.content.get("args")
        arch = str(_argument(args, "arch") or "")
        patch = _argument(args, "patch_size") if arch.startswith(("vit", "deit", "xcit")) else None
        trained = _vit_trained(self.parts(file, "teacher")["backbone"], self.licence,
                               patch_size=patch if isinstance(patch, int) else None)
        if trained.image_size is None:  # no ViT position embeddings: the script's global crops
            trained.image_size = 224
        return trained


class DINOLayout(_SelfDistillationLayout):
    """DINO's checkpoints (Caron et al. 2021; facebookresearch/dino, Apache-2.0): ``checkpoint.pth`` and the
    released ``*_full_checkpoint.pth``, main_dino.py:278-288: ``{"student", "teacher", "optimizer", "epoch",
    "args" (argparse.Namespace), "dino_loss" ({"center"}), ["fp16_scaler"]}``.

    Networks: ``teacher`` (what the paper evaluates; eval_linear.py:264 and eval_knn.py:203 default to
    ``--checkpoint_key teacher``), then ``student``. Each is a ``utils.MultiCropWrapper`` (utils.py:594-608) of
    ``backbone`` (a ViT of vision_transformer.py:134-230 with timm's names, ``head``/``fc`` removed; or a
    torchvision ResNet, or an XCiT) and ``head``, a ``DINOHead``. The student is saved DDP-wrapped
    (``module.``, main_dino.py:206), the teacher only when the backbone has BatchNorm (main_dino.py:197-205).

    Parts: ``backbone`` (``backbone.*`` without prefixes, the official model's names) and ``projector``
    (``head.*`` in ``clrun/dino_head``'s names, see ``dino_head``).

    Trained: patch size from the patch embedding (else ``args.patch_size`` of a ViT or XCiT ``args.arch``),
    image size from the position embeddings' grid, else the global crops' 224 px (main_dino.py:436), ImageNet
    mean and std (main_dino.py:431), no registers for a ViT, Apache-2.0.
    """

    family = "dino"
    licence = "Apache-2.0"


class IBOTLayout(_SelfDistillationLayout):
    """iBOT's checkpoints (Zhou et al. 2022; bytedance/ibot, Apache-2.0): ``checkpoint.pth`` (the released
    "full ckpt"), main_ibot.py:348-358: ``{"student", "teacher", "optimizer", "epoch", "args", "ibot_loss"
    ({"center", "center2"}), ["fp16_scaler"]}``.

    Networks: ``teacher`` ("generally better", README.md:37), then ``student``; each a ``MultiCropWrapper`` of
    ``backbone`` (models/vision_transformer.py:134-172; the student's has ``masked_embed``, the ``(1, D)``
    token of its masked patches, main_ibot.py:209-214) and ``head``, an ``iBOTHead`` (models/head.py:145-180).
    The student is saved DDP-wrapped (``module.``, main_ibot.py:260-261).

    Parts: ``backbone`` (``backbone.*``, official names, ``masked_embed`` included) and ``projector``: the
    head's MLP and class-token prototypes (``last_layer``) in ``clrun/dino_head``'s names; its patch
    prototypes (``last_layer2``: the student's own, ``shared_head`` False by default; the teacher's a copy of
    ``last_layer``, ``shared_head_teacher`` True) are left out: cl-run's iBOT shares one head.

    The released backbones (``checkpoint_teacher.pth``, ``checkpoint_student.pth``: ``{"state_dict":
    backbone}``) are plain ViT state dicts, left to the generic layout.

    Trained: patch size from the patch embedding (else ``args.patch_size``), image size from the position
    embeddings, else the global crops' 224 px (main_ibot.py:592), ImageNet mean and std (main_ibot.py:586), no
    registers for a ViT, Apache-2.0.
    """

    family = "ibot"
    licence = "Apache-2.0"


# ------------------------------------------------------------------------------------------------------ DINOv2
_DINOV2_BACKBONE = re.compile(
    r"^(cls_token|pos_embed|mask_token|register_tokens|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)"
    r"|blocks\.\d+\.(\d+\.)?(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|mlp\.w12|mlp\.w3)\.(weight|bias)"
    r"|blocks\.\d+\.(\d+\.)?ls[12]\.gamma)$")


def _is_dinov2_backbone(state: Optional[State]) -> bool:
    """Whether ``state`` is exactly a ``DinoVisionTransformer``'s (dinov2/models/vision_transformer.py:44-170):
    its ``mask_token`` is ``(1, D)`` (BEiT's and SimMIM's are ``(1, 1, D)``, MAE's belongs to a decoder, iBOT's
    is ``masked_embed``), and it has nothing else than its own names (DINOv3's storage tokens and RoPE, a
    classifier, timm's ``reg_token`` are not)."""
    if not state or "mask_token" not in state or state["mask_token"].ndim != 2:
        return False
    return ({"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(state)
            and all(_DINOV2_BACKBONE.match(name) for name in state))


def _unchunked(backbone: State) -> State:
    """Training configs chunk the blocks for FSDP (``block_chunks``, vision_transformer.py:154-161): block
    ``i`` of chunk ``c`` is ``blocks.c.i.`` (the chunk is padded with ``Identity`` to keep ``i`` global), here
    ``blocks.i.``."""
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", name): value for name, value in backbone.items()}


class DINOv2Layout:
    """DINOv2's weights (Oquab et al. 2023; facebookresearch/dinov2, code and weights Apache-2.0 since
    2023-08-31, commit 81b2b64), in three forms, each an ``SSLMetaArch``'s (dinov2/train/ssl_meta_arch.py:
    31-116): ``student`` and ``teacher`` ``ModuleDict``s of ``backbone`` (a ``DinoVisionTransformer``),
    ``dino_head`` and, with ``ibot.separate_head``, ``ibot_head`` (both ``DINOHead``s):

    * the evaluation's ``eval/<iteration>/teacher_checkpoint`` file, dinov2/train/train.py:122-131:
      ``{"teacher": model.teacher.state_dict()}`` (``backbone.*``, ``dino_head.*``, ``ibot_head.*``);
      networks ``("teacher",)``;
    * the training checkpoint's dict, fvcore's (dinov2/fsdp/__init__.py:86-111): ``{"model", "optimizer",
      "iteration"}`` with ``model`` in the full form (``student.*``, ``teacher.*``, ``dino_loss.center``,
      ``ibot_patch_loss.center``); networks ``("teacher", "student")``. The files training writes,
      ``model_<iteration>.rank_<r>.pth``, hold FSDP's ``LOCAL_STATE_DICT``: each rank's shard of flattened
      parameters (``ShardedTensor``s), which no key map reads: consolidate them to this full form first;
    * a released hub backbone (``dinov2_vits14_pretrain.pth``, ``..._reg4_pretrain.pth``; dinov2/hub/
      backbones.py:17-59): the ``DinoVisionTransformer``'s flat state dict, with ``mask_token`` ``(1, D)`` and,
      for the ``_reg`` models, ``register_tokens``; recognized only by exactly that key set
      (``_is_dinov2_backbone``); network ``("model",)``.

    Parts: ``backbone``, the ``DinoVisionTransformer``'s names (timm's but ``mask_token`` and
    ``register_tokens``, which timm's checkpoint filter converts, and SwiGLU's ``mlp.w12``/``mlp.w3`` of the
    giant models), with training's block chunks ``blocks.<c>.<i>.`` flattened to ``blocks.<i>.``;
    ``projector``: ``dino_head`` in ``clrun/dino_head``'s names. Left out: ``ibot_head`` (cl-run's iBOT
    shares one head for class and patch tokens; DINOv2's default config shares it too, ``separate_head``
    false), the losses' centers.

    Trained: patch size from the patch embedding, image size from the position embeddings (the global crops'
    size the model was built for, models/__init__.py:14-43: 224 in training configs, 518 for the released
    backbones), register tokens from ``register_tokens``, ImageNet mean and std (dinov2/data/transforms.py:
    42-43), Apache-2.0.
    """

    licence = "Apache-2.0"

    @staticmethod
    def _form(content: Mapping[str, Any]) -> Optional[str]:
        model = _state(content.get("model"))
        if _has(model, "teacher.backbone.") or _has(model, "student.backbone."):
            return "train"
        teacher = _state(content.get("teacher"))
        if _has(teacher, "backbone.") and (_has(teacher, "dino_head.") or _has(teacher, "ibot_head.")
                                           or "backbone.mask_token" in teacher):
            return "eval"
        if _is_dinov2_backbone(_state(content)):
            return "hub"
        return None

    def recognizes(self, file: WeightsFile) -> bool:
        return self._form(file.content) is not None

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        form = self._form(file.content)
        if form == "train":
            model = _state(file.content["model"])
            return tuple(n for n in ("teacher", "student") if _has(model, f"{n}.backbone."))
        return ("teacher",) if form == "eval" else ("model",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        _select(file, network, self.networks(file))
        form = self._form(file.content)
        if form == "hub":
            return {"backbone": _unchunked(dict(file.content))}
        state = _under(file.content["model"], f"{network}.") if form == "train" else _state(file.content["teacher"])
        parts = {"backbone": _unchunked(_under(state, "backbone.")),
                 "projector": dino_head(_under(state, "dino_head."))}
        return {part: tensors for part, tensors in parts.items() if tensors}

    def trained(self, file: WeightsFile) -> Trained:
        network = self.networks(file)[0]
        return _vit_trained(self.parts(file, network)["backbone"], self.licence)


# --------------------------------------------------------------------------------------------------------- MAE
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
        model = _state(file.content.get("model"))
        return _unwrapped(model) if model is not None else None

    def recognizes(self, file: WeightsFile) -> bool:
        model = self._model(file)
        return model is not None and "decoder_embed.weight" in model and "decoder_pred.weight" in model

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("model",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        _select(file, network, self.networks(file))
        model = self._model(file)
        decoder = {name: value for name, value in model.items()
                   if name.startswith("decoder_") or name == "mask_token"}
        backbone = {name: value for name, value in model.items() if name not in decoder}
        return {"backbone": backbone, "token_head": token_transformer(decoder, "decoder_", "decoder_pos_embed")}

    def trained(self, file: WeightsFile) -> Trained:
        size = _argument(file.content.get("args"), "input_size")
        return _vit_trained(self.parts(file, "model")["backbone"], self.licence,
                            image_size=size if isinstance(size, int) else None)


# ------------------------------------------------------------------------------------------------------ I-JEPA
class IJEPALayout:
    """I-JEPA's checkpoints (Assran et al. 2023; facebookresearch/ijepa, CC-BY-NC-4.0): ``jepa-latest.pth.tar``
    and the released ``IN1K-vit.h.14-300e.pth.tar`` etc., src/train.py:248-260: ``{"encoder", "predictor",
    "target_encoder", "opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr"}``, each network
    DDP-wrapped (``module.``, train.py:221-223). Recognized by ``encoder`` and ``target_encoder``.

    Networks: ``teacher``, the target encoder (the one the paper evaluates; the repository has no evaluation
    code), then ``student``, the context
    encoder with the predictor. Parts: ``backbone``, the ``VisionTransformer`` (src/models/vision_transformer.
    py:329-380: timm's names, no class token; ``pos_embed``, fixed sin-cos, kept as the ViT's position
    embeddings: a timm ViT with ``class_token: false``, ``global_pool: avg``); for the student also
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
        encoder, target = (_state(file.content.get(key)) for key in ("encoder", "target_encoder"))
        return (encoder is not None and target is not None and _has(_unwrapped(encoder), "blocks.")
                and _has(_unwrapped(target), "blocks."))

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("teacher", "student")

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        _select(file, network, self.networks(file))
        if network == "teacher":
            return {"backbone": _unwrapped(_state(file.content["target_encoder"]))}
        parts = {"backbone": _unwrapped(_state(file.content["encoder"]))}
        predictor = _state(file.content.get("predictor"))
        if predictor is not None:
            parts["token_head"] = token_transformer(_unwrapped(predictor), "predictor_", "predictor_pos_embed")
        return parts

    def trained(self, file: WeightsFile) -> Trained:
        return _vit_trained(self.parts(file, "teacher")["backbone"], self.licence, prefix_tokens=0)


# ----------------------------------------------------------------------------------------------------- MoCo v3
class MoCoV3Layout:
    """MoCo v3's checkpoints (Chen, Xie and He 2021; facebookresearch/moco-v3, CC-BY-NC-4.0):
    ``checkpoint_<epoch>.pth.tar`` and the released ``vit-b-300ep.pth.tar`` etc., main_moco.py:310-316:
    ``{"epoch", "arch", "state_dict", "optimizer", "scaler"}`` with ``state_dict`` the DDP-wrapped ``MoCo``
    (moco/builder.py:11-34): ``module.base_encoder.``, ``module.momentum_encoder.``, ``module.predictor.``.
    Recognized by the base and momentum encoders.

    Networks: ``student``, the base encoder (the one the paper evaluates: main_lincls.py:180-183 and
    convert_to_deit.py keep ``base_encoder``), then ``teacher``, the momentum encoder. Parts: ``backbone``,
    the encoder without its projector (a ``VisionTransformerMoCo``, vits.py:25-69, timm's ViT with fixed
    sin-cos ``pos_embed``; or a torchvision ResNet); ``projector``, the encoder's ``head`` (ViTs: a 3-layer
    MLP, builder.py:112-119) or ``fc`` (ResNets: 2 layers, builder.py:99-106); for the student also
    ``predictor`` (2 layers, builder.py:109, 122). Both in ``clrun/mlp``'s names (see ``moco_mlp``): the
    projector is ``MLPProjector(num_layers=3 (ViT) / 2 (ResNet), batch_norm=True, last_batch_norm=True)``,
    the ViTs' predictor ``mlp_predictor(num_layers=2, last_batch_norm=True)``, the ResNets' without
    ``last_batch_norm``.

    Trained: patch size from the patch embedding (ViTs), image size from the position embeddings, else the
    crops' 224 px (main_moco.py:263), ImageNet mean and std (main_moco.py:258-259), no registers, CC-BY-NC-4.0.
    """

    licence = "CC-BY-NC-4.0"
    _ENCODERS = {"student": "base_encoder.", "teacher": "momentum_encoder."}

    @staticmethod
    def _state_dict(file: WeightsFile) -> Optional[State]:
        state = _state(file.content.get("state_dict"))
        return _unwrapped(state) if state is not None else None

    def recognizes(self, file: WeightsFile) -> bool:
        state = self._state_dict(file)
        return _has(state, "base_encoder.") and _has(state, "momentum_encoder.")

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("student", "teacher")

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        _select(file, network, self.networks(file))
        state = self._state_dict(file)
        encoder = _under(state, self._ENCODERS[network])
        head = "head." if _has(encoder, "head.") else "fc."
        parts = {"backbone": {name: value for name, value in encoder.items() if not name.startswith(head)},
                 "projector": moco_mlp(_under(encoder, head))}
        if network == "student":
            parts["predictor"] = moco_mlp(_under(state, "predictor."))
        return {part: tensors for part, tensors in parts.items() if tensors}

    def trained(self, file: WeightsFile) -> Trained:
        trained = _vit_trained(self.parts(file, "student")["backbone"], self.licence)
        if trained.image_size is None:  # a ResNet: the script's crops
            trained.image_size = 224
        return trained
