"""DINO's loss: self-distillation with a centered, sharpened momentum teacher."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import ComponentError, Range, checked, distributed, loss_kit, name_of
from clrun.plugins.losses.koleo import koleo
from clrun.plugins.losses.sinkhorn import sinkhorn_knopp

# What DINO's loss and iBOT's (which composes DINO's term) declare alike: the limits of their shared arguments
# and their collapse signals.
InDim = Annotated[int, Range(min=2, hint="the head's output width, set by the training loop")]
TeacherTemperature = Annotated[float, loss_kit.temperature_range("DINO uses 0.04 to 0.07")]
StudentTemperature = Annotated[float, loss_kit.temperature_range("DINO uses 0.1")]
CenterMomentum = Annotated[float, Range(min=0, max=1, hint="DINO uses 0.9; 1 turns centering off")]
COLLAPSE_SIGNALS = (
    loss_kit.CollapseSignal("teacher_entropy_ratio", 0.98, above=True, meaning=(
        "the teacher's output is uniform over the prototypes; sharpen it: a lower teacher_temperature")),
    loss_kit.CollapseSignal("top_prototype_share", 0.5, above=True, meaning=(
        "one prototype takes most images; center the teacher: center_momentum below 1 (DINO: 0.9)")),
)


def teacher_distributions(teacher: Sequence[Tensor], teacher_temperature: float, center: Tensor | None = None,
                          sinkhorn_iterations: int = 3) -> list[Tensor]:
    """The teacher's distributions per global view, from its (detached) outputs ``(N, K)``: centered by
    ``center`` and sharpened, or, with ``center=None``, Sinkhorn-Knopp's codes over all global views of the
    batch at once (as DINOv2's ``sinkhorn_knopp_teacher``)."""
    if center is None:
        codes = sinkhorn_knopp(torch.cat(list(teacher)), sinkhorn_iterations, teacher_temperature)
        return list(codes.split([len(x) for x in teacher]))
    return [F.softmax((x - center.to(x.dtype)) / teacher_temperature, dim=-1) for x in teacher]


def dino_cross_entropy(student: Sequence[Tensor], targets: Sequence[Tensor], global_views: Sequence[int],
                       student_temperature: float) -> Tensor:
    """DINO's term: the mean over pairs (global view ``i``, view ``v != i``) of the cross-entropy of the
    teacher's distribution ``targets[k]`` (global view ``global_views[k]``'s) to the student's softmax of
    view ``v`` (``student``: every view's outputs ``(N, K)``, already in the compute dtype)."""
    log_student = [F.log_softmax(s / student_temperature, dim=-1) for s in student]
    terms = [-(q * log_student[v]).sum(dim=-1).mean()
             for i, q in zip(global_views, targets) for v in range(len(student)) if v != i]
    return torch.stack(terms).mean()


@torch.no_grad()
def teacher_metrics(targets: Sequence[Tensor], loss: Tensor) -> dict[str, Tensor]:
    """DINO's collapse indicators of the teacher's distributions (see :class:`DINOLoss`): ``teacher_entropy``,
    ``teacher_entropy_ratio``, ``teacher_kl`` (``loss``, the cross-entropy, minus the entropy) and
    ``top_prototype_share``."""
    probabilities = torch.cat(list(targets))
    k = probabilities.shape[-1]
    entropy = -(probabilities * probabilities.clamp_min(1e-30).log()).sum(dim=-1).mean()
    # Counts per prototype by index_add_ (bincount's output size is read from the device).
    winners = probabilities.argmax(dim=-1)
    shares = probabilities.new_zeros(k).index_add_(0, winners, probabilities.new_ones(len(winners))) / len(probabilities)
    # Each pair's cross-entropy is its KL plus the teacher's entropy; every teacher view is in the same
    # number of pairs, so the mean KL is the loss minus the mean entropy.
    return {"teacher_entropy": entropy, "teacher_entropy_ratio": entropy / math.log(k),
            "teacher_kl": loss.detach() - entropy, "top_prototype_share": shares.max()}


def dino(student: Sequence[Tensor], teacher: Sequence[Tensor], global_views: Sequence[int], teacher_temperature: float,
         student_temperature: float, center: Tensor | None = None, sinkhorn_iterations: int = 3
         ) -> tuple[Tensor, dict[str, Tensor]]:
    """DINO's loss of the student's outputs for every view and the teacher's for the global views (each
    ``(N, K)``; the teacher's are detached here): the cross-entropy and the teacher's metrics. ``center``:
    DINO's centering (``None``: DINOv2's Sinkhorn-Knopp). At least float32, also under autocast."""
    dtype = loss_kit.compute_dtype(*student, *teacher)
    with loss_kit.autocast_off(student[0]):
        targets = teacher_distributions([x.detach().to(dtype) for x in teacher], teacher_temperature, center,
                                        sinkhorn_iterations)
        loss = dino_cross_entropy([s.to(dtype) for s in student], targets, global_views, student_temperature)
        return loss, teacher_metrics(targets, loss)


def dino_inputs(loss: nn.Module, out: Any, width: int) -> tuple[list[Tensor], list[Tensor], list[int]]:
    """The student's outputs for every view, the teacher's for the global views, and the global views'
    indices, after checking that the recipe makes them (DINO's and iBOT's class-token part); ``loss`` names
    the errors."""
    teacher = loss_kit.required_target_projections(loss, out)
    student = list(out.projections)
    global_views = loss_kit.global_view_indices(loss, out, minimum=1, why="the teacher sees the global views")
    if len(student) < 2:
        raise ComponentError(
            f"{name_of(loss)} needs at least 2 views (the student predicts the teacher on another view); the "
            f"recipe makes {len(student)}. Use 2 global views, and local ones for multi-crop")
    loss_kit.batch_of_width(loss, "every view's head outputs", [*student, *teacher], width)
    return student, teacher, global_views


@checked
class DINOLoss(nn.Module):
    r"""DINO: the student's distribution over K prototypes predicts the teacher's on another view.

    Caron et al. (2021), "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
    (arXiv:2104.14294), algorithm 1 and the official ``DINOLoss`` (facebookresearch/dino, main_dino.py).

    Input: the student's (online) head outputs for every view, ``out.projections`` (global and local,
    each ``(N, K)``), and the teacher's (the momentum target's) for the global views,
    ``out.target_projections``. With ``c`` the center ``(K,)``:

        P_t(i) = softmax((t_i - c) / teacher_temperature)          teacher, global view i (no gradient)
        P_s(v) = softmax(s_v / student_temperature)                 student, every view v
        loss   = mean over pairs (i, v), v not the view i itself, of mean_n -sum_k P_t(i)[n,k] log P_s(v)[n,k]

    Centering stops one prototype from dominating; sharpening (a low teacher temperature) stops the
    uniform output: the two collapses DINO balances. After the loss, in training mode, the center moves
    towards the teacher's mean output of the batch: ``c = m c + (1 - m) mean_{i,n} t_i[n]``, over every
    rank's images (all-reduced, as the official ``update_center``); it is a buffer, in checkpoints.

    DINO warms the teacher temperature up from 0.04 to 0.07 over 30 epochs, one value per epoch
    (``np.linspace(0.04, 0.07, 30)`` indexed by epoch: 0.07 from epoch 29); in a recipe that is a schedule
    (clrun.schedule): ``teacher_temperature: {schedule: linear, start: 0.04, end: 0.07, until_epoch: 29,
    per: epoch}``, or without ``per: epoch`` a ramp set each step.

    DINOv2's options (Oquab et al. 2023, arXiv:2304.07193, and facebookresearch/dinov2):
    ``centering: sinkhorn`` replaces the center by Sinkhorn-Knopp normalization of the teacher's scores
    (``clrun.plugins.losses.sinkhorn``, ``sinkhorn_iterations`` rounds over the global views of every
    rank's images together, at the teacher temperature); ``koleo_weight`` adds the KoLeo regularizer
    (``clrun.plugins.losses.koleo``) of each global view's backbone features (the class token), which
    spreads the images' features apart (DINOv2: 0.1).

    Across ranks (torchrun): the loss is a mean over each rank's images, so DDP's mean of the gradients
    is the global batch's; the center is updated from all ranks' teacher outputs, the same on every rank;
    Sinkhorn-Knopp and KoLeo's nearest neighbours run over every rank's images.

    Args:
        in_dim:              the head's output width K (injected by the training loop).
        teacher_temperature: sharpening of the teacher (DINO: 0.04 -> 0.07 warm-up, then 0.07).
        student_temperature: of the student's softmax (DINO: 0.1).
        center_momentum:     of the center's moving average (DINO: 0.9); unused with Sinkhorn-Knopp.
        centering:           ``"center"`` (DINO's moving average) or ``"sinkhorn"`` (DINOv2's).
        sinkhorn_iterations: Sinkhorn-Knopp rounds (DINOv2: 3).
        koleo_weight:        weight of the KoLeo term, 0 for none (DINOv2: 0.1).

    Returns a dict with the scalar ``"loss"`` and detached metrics: ``teacher_entropy`` (mean entropy of
    the teacher's distributions, nats: ``log K`` when uniform, 0 when one-hot), ``teacher_entropy_ratio``
    (the same over ``log K``), ``teacher_kl`` (mean KL(P_t || P_s) over the pairs: the loss minus the
    teacher's entropy), and ``top_prototype_share`` (the largest share of the batch whose teacher argmax
    is one prototype: 1 when one dominates).

    The health alarm watches DINO's two collapses (``collapse_signals``): a uniform teacher (entropy ratio
    above 0.98: every prototype equally likely, the student learns nothing) and a dominant prototype (one
    takes more than half of the images: what centering prevents).
    """

    main_metric = "teacher_entropy"
    reads = frozenset({"online.projections", "target.projections", "online.features"})  # features: KoLeo's
    collapse_signals = COLLAPSE_SIGNALS

    def __init__(
        self,
        in_dim: InDim,
        teacher_temperature: TeacherTemperature = 0.04,
        student_temperature: StudentTemperature = 0.1,
        center_momentum: CenterMomentum = 0.9,
        centering: Annotated[Literal["center", "sinkhorn"], Range(hint="DINO: center, DINOv2: sinkhorn")] = "center",
        sinkhorn_iterations: Annotated[int, Range(min=1, hint="DINOv2 uses 3")] = 3,
        koleo_weight: Annotated[float, Range(min=0, hint="DINOv2 uses 0.1; 0 for none")] = 0.0,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.teacher_temperature, self.student_temperature = float(teacher_temperature), float(student_temperature)
        self.center_momentum, self.centering = float(center_momentum), centering
        self.sinkhorn_iterations, self.koleo_weight = sinkhorn_iterations, float(koleo_weight)
        self.register_buffer("center", torch.zeros(self.in_dim))

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, teacher_temperature={self.teacher_temperature}, "
                f"student_temperature={self.student_temperature}, center_momentum={self.center_momentum}, "
                f"centering={self.centering}, koleo_weight={self.koleo_weight}")

    def forward(self, out: Any) -> dict[str, Tensor]:
        student, teacher, global_views = dino_inputs(self, out, self.in_dim)
        center = self.center if self.centering == "center" else None
        loss, metrics = dino(student, teacher, global_views, self.teacher_temperature, self.student_temperature,
                             center, self.sinkhorn_iterations)
        if self.koleo_weight > 0:
            spread = koleo_of_views(out, global_views, loss_kit.compute_dtype(*student, *teacher))
            loss = loss + self.koleo_weight * spread
            metrics["koleo"] = spread.detach()
        if self.training and center is not None:
            move_center(self.center, torch.cat([x.detach().to(loss.dtype) for x in teacher]), self.center_momentum)
        return {"loss": loss, **metrics}


def koleo_of_views(out: Any, views: list[int], dtype: torch.dtype) -> Tensor:
    """DINOv2's KoLeo term: the sum over the global ``views`` of KoLeo on their backbone features (class tokens),
    in ``dtype`` with autocast off."""
    with loss_kit.autocast_off(out.features[views[0]]):
        return torch.stack([koleo(out.features[i].to(dtype)) for i in views]).sum()


@torch.no_grad()
def move_center(center: Tensor, rows: Tensor, momentum: float) -> None:
    """``center = momentum * center + (1 - momentum) * mean of rows``, the mean over every rank's rows
    ``(N, K)`` (one all-reduce of their sum and count): DINO's ``update_center`` and iBOT's patch center."""
    count = rows.new_full((1,), float(len(rows)))  # made on the device: no upload
    summed = distributed.all_reduce_sum(torch.cat([rows.sum(dim=0), count]))
    center.mul_(momentum).add_((summed[:-1] / summed[-1]).to(center.dtype), alpha=1 - momentum)
