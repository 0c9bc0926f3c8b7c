"""iBOT's loss: DINO's self-distillation of the class token plus masked patch-token distillation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clrun import ComponentError, loss_kit
from clrun.plugins.losses.dino import DINOLoss, move_center

OWNER = "clrun/ibot"


class IBOTLoss(DINOLoss):
    r"""iBOT (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022,
    arXiv:2111.07832), as the official ``iBOTLoss`` computes it (bytedance/ibot, main_ibot.py).

    The class-token part is :class:`DINOLoss` (``out.projections`` against ``out.target_projections``,
    the pairs of different views). The patch part compares, for each global view ``i``, the student's
    head outputs of its patch tokens (``out.token_projections[i]``, from the *masked* view) with the
    teacher's (``out.target_token_projections[i]``, from the whole view), on the hidden patches only:

        P_t = softmax((t_patch - c2) / teacher_patch_temperature)        (no gradient)
        l_i = mean_n [ sum_{hidden p} -sum_k P_t[n,p,k] log softmax(s_patch / student_temperature)[n,p,k]
                       / max(#hidden_n, 1) ]
        loss = lambda_cls * loss_DINO + lambda_patch * mean_i l_i

    and ``c2``, the patch center, moves like DINO's center over the teacher's patch outputs of the batch
    (all patches of all global views, every rank's). The recipe needs ``masking:`` with
    ``project_tokens: true`` (the head is shared by class and patch tokens, iBOT's ``shared_head``),
    hidden patches replaced by the mask token, and a ``target:``.

    Args (besides DINO's ``teacher_temperature``, ``student_temperature``, ``center_momentum``):
        teacher_patch_temperature: sharpening of the teacher's patch outputs (iBOT: 0.04 -> 0.07).
        patch_center_momentum:     of the patch center (iBOT: 0.9).
        lambda_cls, lambda_patch:  the two parts' weights (iBOT: 1 and 1).

    Returns DINO's metrics plus ``cls_loss`` and ``patch_loss`` (weighted), detached.
    """

    owner = OWNER

    def __init__(self, in_dim: int, teacher_temperature: float = 0.04, student_temperature: float = 0.1,
                 center_momentum: float = 0.9, teacher_patch_temperature: float = 0.04,
                 patch_center_momentum: float = 0.9, lambda_cls: float = 1.0, lambda_patch: float = 1.0) -> None:
        super().__init__(in_dim, teacher_temperature, student_temperature, center_momentum)
        self.teacher_patch_temperature = loss_kit.temperature_arg(
            OWNER, teacher_patch_temperature, " (iBOT uses 0.04 to 0.07)", name="teacher_patch_temperature")
        self.patch_center_momentum = loss_kit.float_arg(OWNER, "patch_center_momentum", patch_center_momentum,
                                                        minimum=0.0, inclusive=True, hint=" and <= 1 (iBOT uses 0.9)")
        if self.patch_center_momentum > 1:
            raise ComponentError(f"{OWNER}: patch_center_momentum must be a number >= 0 and <= 1 (iBOT uses 0.9), "
                                 f"got {patch_center_momentum!r}", argument="patch_center_momentum")
        self.lambda_cls = loss_kit.float_arg(OWNER, "lambda_cls", lambda_cls, inclusive=True, hint=" (iBOT uses 1)")
        self.lambda_patch = loss_kit.float_arg(OWNER, "lambda_patch", lambda_patch, inclusive=True, hint=" (iBOT uses 1)")
        self.register_buffer("patch_center", torch.zeros(self.in_dim))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, teacher_patch_temperature={self.teacher_patch_temperature}, "
                f"lambda_cls={self.lambda_cls}, lambda_patch={self.lambda_patch}")

    def forward(self, out: Any) -> dict[str, Tensor]:
        student, teacher, masks = self._patch_inputs(out)
        result = super().forward(out)  # DINO's part, and its center update
        cls_loss = self.lambda_cls * result["loss"]
        dtype = loss_kit.compute_dtype(student, teacher)
        with loss_kit.autocast_off(student[0]):
            t = [x.detach().to(dtype) for x in teacher]
            terms = []
            for s, q, hidden in zip(student, t, masks):
                target = F.softmax((q - self.patch_center.to(dtype)) / self.teacher_patch_temperature, dim=-1)
                per_patch = -(target * F.log_softmax(s.to(dtype) / self.student_temperature, dim=-1)).sum(dim=-1)
                weights = hidden.to(dtype)
                terms.append(((per_patch * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)).mean())
            patch_loss = self.lambda_patch * torch.stack(terms).mean()
        if self.training:
            self._update_patch_center(t)
        return {**result, "loss": cls_loss + patch_loss, "cls_loss": cls_loss.detach(), "patch_loss": patch_loss.detach()}

    def _patch_inputs(self, out: Any) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per global view: the student's patch outputs, the teacher's, and the hidden patches ``(B, L)``."""
        student, teacher, masks = (getattr(out, name, None) for name in ("token_projections", "target_token_projections", "masks"))
        if student is None or teacher is None or masks is None:
            raise ComponentError(
                f"{OWNER} compares the head's outputs of masked patch tokens with the target's: the recipe needs a "
                "masking: section with project_tokens: true (e.g. generator: {name: clrun/block_mask}), a ViT "
                "backbone with mask_token: true, and a target: section")
        views = loss_kit.global_view_indices(OWNER, out, minimum=1)
        shapes = [(tuple(student[i].shape), tuple(out.masks[i].visible.shape)) for i in views]
        if any(s[:2] != m for s, m in shapes):
            raise ComponentError(f"{OWNER} needs every patch token's output, with hidden patches replaced by the mask "
                                 f"token (masking.hidden: mask_token); got outputs and masks of shapes {shapes}")
        return [student[i] for i in views], list(teacher), [~out.masks[i].visible for i in views]

    def _update_patch_center(self, teacher: list[Tensor]) -> None:
        move_center(self.patch_center, torch.cat([x.flatten(0, 1) for x in teacher]), self.patch_center_momentum)
