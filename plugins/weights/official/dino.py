"""DINO's and iBOT's checkpoints (``clrun/dino``, ``clrun/ibot``): iBOT's training script is DINO's, its
checkpoint DINO's with patch prototypes in the heads and an ``ibot_loss``; what tells the two apart is shared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from clrun.plugins.weights.official.common import (State, argument, as_state, check_network, has_prefix, under,
                                                   unwrapped, vit_trained)
from clrun.plugins.weights.official.heads import dino_head
from clrun.weights.layout import Trained, WeightsFile


def _self_distillation(content: Mapping[str, Any]) -> Optional[str]:
    """``"dino"`` or ``"ibot"`` for a checkpoint of ``MultiCropWrapper`` (backbone + head) teachers and
    students, by its heads: iBOT's have patch prototypes (``last_layer2``, or ``mlp2`` without a bottleneck,
    models/head.py:160-177) and its checkpoint an ``ibot_loss``; DINO's neither."""
    teacher = as_state(content.get("teacher"))
    if teacher is None:
        return None
    teacher = unwrapped(teacher)
    if not (has_prefix(teacher, "backbone.") and has_prefix(teacher, "head.")):
        return None
    student = as_state(content.get("student"))
    heads = [name for name in [*teacher, *unwrapped(student or {})] if name.startswith("head.")]
    if "ibot_loss" in content or any(name.startswith(("head.last_layer2.", "head.mlp2.")) for name in heads):
        return "ibot"
    return "dino"


class _SelfDistillationLayout:
    family = ""
    licence = ""

    def recognizes(self, file: WeightsFile) -> bool:
        return _self_distillation(file.content) == self.family

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("teacher", "student") if as_state(file.content.get("student")) is not None else ("teacher",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, State]:
        check_network(file, network, self.networks(file))
        state = unwrapped(as_state(file.content[network]))
        parts = {"backbone": under(state, "backbone."), "projector": dino_head(under(state, "head."))}
        return {part: tensors for part, tensors in parts.items() if tensors}

    def trained(self, file: WeightsFile) -> Trained:
        args = file.content.get("args")
        arch = str(argument(args, "arch") or "")
        patch = argument(args, "patch_size") if arch.startswith(("vit", "deit", "xcit")) else None
        trained = vit_trained(self.parts(file, "teacher")["backbone"], self.licence,
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
