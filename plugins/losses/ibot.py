"""iBOT's loss: DINO's self-distillation of the class token plus masked patch-token distillation."""

from __future__ import annotations

from typing import Annotated, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import ComponentError, Range, checked, loss_kit, name_of
from clrun.plugins.losses.dino import (COLLAPSE_SIGNALS, CenterMomentum, InDim, StudentTemperature, TeacherTemperature,
                                       dino, dino_inputs, koleo_of_views, move_center)


def ibot_patch_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], hidden: Sequence[Tensor], center: Tensor,
                    teacher_temperature: float, student_temperature: float) -> Tensor:
    """iBOT's patch term, per global view: the student's outputs of its patch tokens ``(B, L, K)`` (from the
    masked view) against the teacher's softmax of its own ``(B, L, K)`` (detached here, centered by
    ``center``, sharpened), on the ``hidden`` patches ``(B, L)`` only; the mean over views of each image's
    mean over its hidden patches. At least float32, also under autocast."""
    dtype = loss_kit.compute_dtype(student, teacher)
    with loss_kit.autocast_off(student[0]):
        terms = []
        for s, x, mask in zip(student, teacher, hidden):
            q = x.detach().to(dtype)
            target = F.softmax((q - center.to(dtype)) / teacher_temperature, dim=-1)
            per_patch = -(target * F.log_softmax(s.to(dtype) / student_temperature, dim=-1)).sum(dim=-1)
            weights = mask.to(dtype)
            terms.append(((per_patch * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)).mean())
        return torch.stack(terms).mean()


@checked
class IBOTLoss(nn.Module):
    r"""iBOT (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022,
    arXiv:2111.07832), as the official ``iBOTLoss`` computes it (bytedance/ibot, main_ibot.py).

    The class-token part is DINO's term (:func:`~clrun.plugins.losses.dino.dino`: ``out.projections``
    against ``out.target_projections``, the pairs of different views, with its center), composed here with
    the patch term :func:`ibot_patch_loss`. The patch part compares, for each global view ``i``, the student's
    head outputs of its patch tokens (``out.token_projections[i]``, from the *masked* view) with the
    teacher's (``out.target_token_projections[i]``, from the whole view), on the hidden patches only:

        P_t = softmax((t_patch - c2) / teacher_patch_temperature)        (no gradient)
        l_i = mean_n [ sum_{hidden p} -sum_k P_t[n,p,k] log softmax(s_patch / student_temperature)[n,p,k]
                       / max(#hidden_n, 1) ]
        loss = lambda_cls * loss_DINO + lambda_patch * mean_i l_i

    and ``c2``, the patch center, moves like DINO's center over the teacher's patch outputs of the batch
    (all patches of all global views, every rank's). The recipe needs ``masking:`` (the projector maps
    the patch tokens too: the head is shared by class and patch tokens, iBOT's ``shared_head``), hidden
    patches replaced by the mask token, and a ``target:``.

    Args (besides DINO's ``teacher_temperature``, ``student_temperature``, ``center_momentum``):
        teacher_patch_temperature: sharpening of the teacher's patch outputs (iBOT: 0.04 -> 0.07).
        patch_center_momentum:     of the patch center (iBOT: 0.9).
        lambda_cls, lambda_patch:  the two parts' weights (iBOT: 1 and 1).

        koleo_weight:              DINOv2's KoLeo term on the global views' class tokens, as in DINO's loss
                                   (DINOv2 = iBOT + KoLeo: 0.1; 0 for none, iBOT's own).

    Returns DINO's metrics plus ``cls_loss`` and ``patch_loss`` (weighted) and, with KoLeo, ``koleo``, detached.
    """

    reads = frozenset({"online.projections", "target.projections", "online.token_projections",
                       "target.token_projections", "masks", "online.features"})  # features: KoLeo's
    main_metric = "teacher_entropy"
    collapse_signals = COLLAPSE_SIGNALS

    def __init__(
        self,
        in_dim: InDim,
        teacher_temperature: TeacherTemperature = 0.04,
        student_temperature: StudentTemperature = 0.1,
        center_momentum: CenterMomentum = 0.9,
        teacher_patch_temperature: Annotated[float, loss_kit.temperature_range("iBOT uses 0.04 to 0.07")] = 0.04,
        patch_center_momentum: Annotated[float, Range(min=0, max=1, hint="iBOT uses 0.9")] = 0.9,
        lambda_cls: Annotated[float, Range(min=0, hint="iBOT uses 1")] = 1.0,
        lambda_patch: Annotated[float, Range(min=0, hint="iBOT uses 1")] = 1.0,
        koleo_weight: Annotated[float, Range(min=0, hint="DINOv2 uses 0.1; 0 for none")] = 0.0,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.teacher_temperature, self.student_temperature = float(teacher_temperature), float(student_temperature)
        self.center_momentum = float(center_momentum)
        self.teacher_patch_temperature = float(teacher_patch_temperature)
        self.patch_center_momentum = float(patch_center_momentum)
        self.lambda_cls, self.lambda_patch = float(lambda_cls), float(lambda_patch)
        self.koleo_weight = float(koleo_weight)
        # The names DINOLoss gave them when iBOT subclassed it: checkpoints of that time still load.
        self.register_buffer("center", torch.zeros(self.in_dim))
        self.register_buffer("patch_center", torch.zeros(self.in_dim))

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, teacher_temperature={self.teacher_temperature}, "
                f"student_temperature={self.student_temperature}, center_momentum={self.center_momentum}, "
                f"teacher_patch_temperature={self.teacher_patch_temperature}, "
                f"lambda_cls={self.lambda_cls}, lambda_patch={self.lambda_patch}, koleo_weight={self.koleo_weight}")

    def forward(self, out: Any) -> dict[str, Tensor]:
        patch_student, patch_teacher, hidden = self._patch_inputs(out)
        student, teacher, global_views = dino_inputs(self, out, self.in_dim)
        loss, metrics = dino(student, teacher, global_views, self.teacher_temperature, self.student_temperature,
                             self.center)
        if self.training:
            move_center(self.center, torch.cat([x.detach().to(loss.dtype) for x in teacher]), self.center_momentum)
        cls_loss = self.lambda_cls * loss
        patch_loss = self.lambda_patch * ibot_patch_loss(patch_student, patch_teacher, hidden, self.patch_center,
                                                         self.teacher_patch_temperature, self.student_temperature)
        if self.training:
            dtype = loss_kit.compute_dtype(patch_student, patch_teacher)
            patches = torch.cat([x.detach().to(dtype).flatten(0, 1) for x in patch_teacher])
            move_center(self.patch_center, patches, self.patch_center_momentum)
        loss = cls_loss + patch_loss
        if self.koleo_weight > 0:
            spread = koleo_of_views(out, global_views, loss_kit.compute_dtype(*student, *teacher))
            loss = loss + self.koleo_weight * spread
            metrics["koleo"] = spread.detach()
        return {"loss": loss, **metrics, "cls_loss": cls_loss.detach(), "patch_loss": patch_loss.detach()}

    def _patch_inputs(self, out: Any) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per global view: the student's patch outputs, the teacher's, and the hidden patches ``(B, L)``."""
        student, teacher, masks = (getattr(out, name, None) for name in ("token_projections", "target_token_projections", "masks"))
        if student is None or teacher is None or masks is None:
            raise ComponentError(
                f"{name_of(self)} compares the head's outputs of masked patch tokens with the target's: the recipe "
                "needs a masking: section (e.g. generator: {name: clrun/block_mask}), a ViT "
                "backbone with mask_token: true, and a target: section")
        views = loss_kit.global_view_indices(self, out, minimum=1)
        shapes = [(tuple(student[i].shape), tuple(out.masks[i].visible.shape)) for i in views]
        if any(s[:2] != m for s, m in shapes):
            raise ComponentError(f"{name_of(self)} needs every patch token's output, with hidden patches replaced by "
                                 f"the mask token (masking.hidden: mask_token); got outputs and masks of shapes {shapes}")
        return [student[i] for i in views], list(teacher), [~out.masks[i].visible for i in views]
