"""DINOv3's Gram anchoring: the patch tokens' Gram matrix held to an earlier teacher's, as a term added to a loss."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import ComponentError, Nested, Range, checked, loss_kit, name_of

# The interpolation modes of torch.nn.functional.interpolate for 2-d maps, and those that take align_corners
# (DINOv3 passes align_corners=False, which only these accept) or antialias.
ResizeMode = Literal["bicubic", "bilinear", "nearest", "nearest-exact", "area"]
_ALIGN_CORNERS = ("bilinear", "bicubic")


def gram_loss(student_patches: Tensor, teacher_patches: Tensor, *, normalize: bool = True, image_level: bool = True,
              remove_negatives: bool = False, remove_only_teacher_negatives: bool = False,
              selected: Optional[Tensor] = None) -> Tensor:
    r"""The Gram anchoring term of DINOv3 (``GramLoss.forward``, facebookresearch/dinov3,
    dinov3/loss/gram_loss.py:34-84): the mean squared difference between the student's and the teacher's
    Gram matrices of patch features.

    student_patches, teacher_patches: ``(B, N, D)``, row ``n`` of both from image ``n`` (the teacher's
    detached here). With ``X`` the L2-normalized patches (``normalize``; raw ones without):

        image_level:      G = X_b X_b^T per image, (B, N, N);  loss = mean_{b,i,j} (G_S - G_T)^2
        not image_level:  X is every patch of the batch, (B N, D); G = X X^T, (BN, BN); the same mean

    ``remove_negatives`` zeroes the negative similarities of both Gram matrices before the difference
    (their gradient then is 0); ``remove_only_teacher_negatives`` the teacher's only. The official code
    also zeroes the student's entries where "both are negative" (gram_loss.py:82), but tests the teacher's
    matrix after zeroing it (:81), so that never happens: the student's matrix is left as it is, here too.
    The two options exclude each other (gram_loss.py:31-32).

    selected: ``(B, N)`` bool, the patches the term covers (DINOv3's ``tokens_used: masked / unmasked``,
    ssl_meta_arch.py:515-520), only at the batch level (ssl_meta_arch.py:230-231): the mean over the
    pairs of selected patches of the whole batch. It is computed as a weighted mean over all pairs, so
    the mask is never read back to the host; none selected gives 0 (the official code: NaN).

    At least float32 (float64 stays float64), also under autocast; the official code casts to float32.
    Returns a 0-dim tensor.
    """
    if student_patches.ndim != 3 or student_patches.shape != teacher_patches.shape:
        raise ValueError(f"gram_loss: student and teacher patches must be (B, N, D) of one shape; got "
                         f"{tuple(student_patches.shape)} and {tuple(teacher_patches.shape)}")
    if remove_negatives and remove_only_teacher_negatives:
        raise ValueError("gram_loss: remove_negatives and remove_only_teacher_negatives exclude each other")
    if selected is not None and image_level:
        raise ValueError("gram_loss: a selection of patches is compared at the batch level only (image_level=False), "
                         "as DINOv3 does")
    dtype = loss_kit.compute_dtype(student_patches, teacher_patches)
    with loss_kit.autocast_off(student_patches):
        student, teacher = student_patches.to(dtype), teacher_patches.detach().to(dtype)
        if normalize:
            student, teacher = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
        if not image_level:
            student, teacher = student.flatten(0, 1), teacher.flatten(0, 1)
        student_sim = student @ student.transpose(-1, -2)
        teacher_sim = teacher @ teacher.transpose(-1, -2)
        if remove_negatives or remove_only_teacher_negatives:
            teacher_sim = torch.where(teacher_sim < 0, torch.zeros_like(teacher_sim), teacher_sim)
        if remove_negatives:
            student_sim = torch.where(student_sim < 0, torch.zeros_like(student_sim), student_sim)
        squared = (student_sim - teacher_sim).square()
        if selected is None:
            return squared.mean()
        weights = selected.reshape(-1).to(dtype)
        pairs = weights.sum().square()
        return (weights @ squared @ weights) / pairs.clamp_min(1.0)


def resize_patch_grid(patches: Tensor, from_grid: tuple[int, int], to_grid: tuple[int, int], *,
                      mode: str = "bicubic", antialias: bool = False) -> Tensor:
    """Patch features ``(B, h*w, D)`` of a ``from_grid`` ``(h, w)`` (raster order) resampled to ``to_grid``:
    ``(B, H*W, D)``, as DINOv3 brings its high-resolution Gram teacher's patch features to the student's
    grid (ssl_meta_arch.py:493-510): the features as a ``(B, D, h, w)`` map, ``F.interpolate`` to
    ``to_grid`` with ``mode`` (DINOv3: bicubic, ``gram.global_teacher_resize_method``),
    ``align_corners=False`` and ``antialias`` (DINOv3: False, ``gram.global_teacher_resize_antialias``),
    back to tokens. DINOv3 resizes the backbone's output tokens (after its final norm) before the Gram
    term's L2 normalization. Computed in at least float32 (the official code: the teacher's dtype); the
    same grid returns ``patches`` unchanged."""
    from_grid, to_grid = tuple(int(x) for x in from_grid), tuple(int(x) for x in to_grid)
    if patches.ndim != 3 or patches.shape[1] != from_grid[0] * from_grid[1]:
        raise ValueError(f"resize_patch_grid: patches must be (B, {from_grid[0]} x {from_grid[1]}, D) for the grid "
                         f"{from_grid}; got {tuple(patches.shape)}")
    if from_grid == to_grid:
        return patches
    extra: dict[str, Any] = {"align_corners": False} if mode in _ALIGN_CORNERS else {}
    if antialias:
        extra["antialias"] = True
    dtype = loss_kit.compute_dtype(patches)
    with loss_kit.autocast_off(patches):
        maps = patches.to(dtype).transpose(-2, -1).unflatten(-1, from_grid)  # (B, D, h, w)
        resized = F.interpolate(maps, size=to_grid, mode=mode, **extra)
        return resized.flatten(-2, -1).transpose(-2, -1)  # (B, H*W, D)


@checked
class GramAnchoring(nn.Module):
    r"""Gram anchoring (Siméoni et al. 2025, "DINOv3", arXiv:2508.10104, section 4), added to another loss:
    the Gram matrix of the student's patch tokens is held to that of a *Gram teacher*, an earlier snapshot
    of the momentum (EMA) teacher, so that the patch features stay local and consistent while the global
    objective trains on (the dense-feature degradation of long trainings that DINOv3 repairs).

        loss = loss_inner + weight * L_Gram,     L_Gram = gram_loss(X_S, X_G)     (:func:`gram_loss`)

    as DINOv3's ``SSLMetaArch`` (facebookresearch/dinov3, dinov3/train/ssl_meta_arch.py:476-528 and
    :651-666) computes it:

    * X_S, the student: the patch tokens (after the backbone's final norm) of every global view as the
      online network saw it, hidden patches replaced by the mask token (``out.online.tokens[i].patches``;
      DINOv3: ``x_norm_patchtokens`` of the masked global crops, :537-546, :478). The recipe needs a
      ``masking:`` section: with ``hidden: mask_token`` as DINOv3; with ``hidden: drop`` the term covers the
      visible patches (the Gram teacher's at the same places), a cl-run extension.
    * X_G, the Gram teacher: its patch tokens of the same global views, whole
      (``out.target.snapshot_tokens[k].patches``, global-view order, no gradient; DINOv3:
      ``x_norm_patchtokens`` of the Gram teacher's backbone, :489-491): the recipe's ``target.snapshot``, an
      earlier copy of the target's backbone refreshed every ``snapshot.every`` steps (DINOv3's
      ``gram.update_frequency``), which sees the views resized by ``snapshot.scale``. DINOv3 feeds it the
      crops at a higher resolution (ViT-7B: 512 px for 256 px student crops) and resizes its patch features
      to the student's grid (:493-510); tokens on another grid than the student's are resized here likewise
      (:func:`resize_patch_grid`, ``resize_mode``, ``resize_antialias``).
    * The global views are taken together, crop-major (:478): at the image level the mean over every
      image of every view; at the batch level one Gram matrix over all their patches.

    Args:
        loss:        the loss to add the term to (a nested loss entry, e.g. ``{name: clrun/dino}``); its
                     metrics, ``main_metric`` and ``collapse_signals`` are this loss's.
        in_dim:      the projector's output width (injected by the training loop, into the nested loss too).
        weight:      of the term. DINOv3's ViT-7B Gram stage ends at 2.0 (dinov3_vit7b16_gram_anchor.yaml:64-69:
                     0 for 1M iterations, then a 1000-iteration cosine to 2.0); high-resolution adaptation
                     uses 1.5 (dinov3_vit7b16_high_res_adapt.yaml:63-68); ssl_default_config.yaml:48 has 1.0.
                     A schedule reproduces the ramp: ``{schedule: cosine, start: 0, end: 2.0, from_step:
                     1000000, until_step: 1001000}``.
        normalize:   L2-normalize the patch features first (``gram.normalized``: true in every config).
        image_level: one Gram matrix per image, else one over the batch (``gram.img_level``: true in the
                     ViT-7B Gram and high-resolution configs, gram_anchor.yaml:58; false in
                     ssl_default_config.yaml:57).
        remove_negatives, remove_only_teacher_negatives: see :func:`gram_loss` (``gram.remove_neg``,
                     ``gram.remove_only_teacher_neg``: false in every config; note that ``GramLoss``'s own
                     constructor default is ``remove_neg=True``, gram_loss.py:18, which the training code
                     always overrides).
        tokens_used: ``all`` the patches (every config), or only the ``masked`` (hidden from the student) or
                     ``unmasked`` ones, which DINOv3 compares at the batch level only (ssl_meta_arch.py:230).
        resize_mode, resize_antialias: how a Gram teacher's tokens on a finer grid come to the student's
                     (``gram.global_teacher_resize_method: bicubic``, ``..._antialias: false``,
                     ssl_default_config.yaml:61-62).

    Returns the inner loss's metrics, its ``"loss"`` plus ``weight * L_Gram``, and ``gram_loss`` (L_Gram,
    unweighted, detached; DINOv3 logs it so, ssl_meta_arch.py:666).
    """

    # What the term reads; an instance reads its inner loss's reads too (None when the inner loss declares none).
    reads = frozenset({"online.tokens", "target.snapshot_tokens", "masks"})
    main_metric: Optional[str] = None
    collapse_signals: tuple = ()

    def __init__(
        self,
        loss: Annotated[nn.Module, Nested("loss")],
        in_dim: Optional[int] = None,
        weight: Annotated[float, Range(min=0, hint="DINOv3's ViT-7B: 0, then 2.0 after 1M iterations")] = 2.0,
        normalize: bool = True,
        image_level: bool = True,
        remove_negatives: bool = False,
        remove_only_teacher_negatives: bool = False,
        tokens_used: Annotated[Literal["all", "masked", "unmasked"], Range(hint="DINOv3: all")] = "all",
        resize_mode: Annotated[ResizeMode, Range(hint="DINOv3: bicubic")] = "bicubic",
        resize_antialias: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise ComponentError(f"{name_of(self)}: loss must be a loss component (a module), got {type(loss).__name__}",
                                 argument="loss")
        inner_dim = getattr(loss, "in_dim", None)
        if in_dim is not None and isinstance(inner_dim, int) and inner_dim != in_dim:
            raise ComponentError(f"{name_of(self)}: its loss {name_of(loss)} was built for in_dim={inner_dim}, but the "
                                 f"projector's output width is {in_dim}", argument="loss")
        if remove_negatives and remove_only_teacher_negatives:
            raise ComponentError(f"{name_of(self)}: remove_negatives and remove_only_teacher_negatives exclude each "
                                 "other (DINOv3 asserts it); choose one", argument="remove_only_teacher_negatives")
        selects = tokens_used != "all"  # a choice of patches, which relates to image_level below
        if selects and image_level:
            raise ComponentError(f"{name_of(self)}: tokens_used: {tokens_used} compares the selected patches of the "
                                 "whole batch, as DINOv3 does: set image_level: false", argument="tokens_used")
        self.loss = loss
        self.in_dim = in_dim
        self.weight = float(weight)
        self.normalize, self.image_level = bool(normalize), bool(image_level)
        self.remove_negatives = bool(remove_negatives)
        self.remove_only_teacher_negatives = bool(remove_only_teacher_negatives)
        self.tokens_used, self.resize_mode, self.resize_antialias = tokens_used, resize_mode, bool(resize_antialias)
        # What the inner loss is and reads, and what the term adds (an inner loss that declares nothing reads all).
        inner_reads = getattr(loss, "reads", None)
        self.reads = None if inner_reads is None else frozenset(inner_reads) | type(self).reads
        self.main_metric = getattr(loss, "main_metric", None)
        self.collapse_signals = tuple(getattr(loss, "collapse_signals", ()))
        # A mean of per-image terms when the inner loss is one and each image's Gram term is its own.
        self.per_image_mean = bool(getattr(loss, "per_image_mean", False) is True and image_level)

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, normalize={self.normalize}, image_level={self.image_level}, "
                f"remove_negatives={self.remove_negatives}, "
                f"remove_only_teacher_negatives={self.remove_only_teacher_negatives}, tokens_used={self.tokens_used}, "
                f"resize_mode={self.resize_mode}, resize_antialias={self.resize_antialias}")

    def forward(self, out: Any) -> dict[str, Tensor]:
        try:
            result = self.loss(out)
        except ComponentError as exc:  # the inner loss's complaint, said as this loss's (its recipe entry)
            raise ComponentError(f"{name_of(self)}: {exc}", argument=exc.argument) from exc
        metrics = {"loss": result} if isinstance(result, Tensor) else dict(result)
        gram = self.gram_term(out)
        metrics["loss"] = metrics["loss"] + self.weight * gram
        metrics["gram_loss"] = gram.detach()
        return metrics

    def gram_term(self, out: Any) -> Tensor:
        """L_Gram of this step (unweighted): the global views' student tokens against the Gram teacher's."""
        student, teacher, selected = self._inputs(out)
        return gram_loss(torch.cat(student), torch.cat(teacher), normalize=self.normalize, image_level=self.image_level,
                         remove_negatives=self.remove_negatives,
                         remove_only_teacher_negatives=self.remove_only_teacher_negatives,
                         selected=None if selected is None else torch.cat(selected))

    def _inputs(self, out: Any) -> tuple[list[Tensor], list[Tensor], Optional[list[Tensor]]]:
        """Per global view: the student's patch tokens, the Gram teacher's on the student's grid, and the
        patches the term covers (None: all)."""
        views = loss_kit.global_view_indices(self, out, minimum=1, why="the Gram term compares the global views' patches")
        online = getattr(getattr(out, "online", None), "tokens", None)
        if online is None or any(online[i] is None for i in views):
            raise ComponentError(
                f"{name_of(self)} compares the patch tokens of the global views: the recipe needs a ViT backbone with "
                "mask_token: true and a masking: section with hidden: mask_token (e.g. generator: {name: "
                "clrun/block_mask})")
        snapshot = getattr(getattr(out, "target", None), "snapshot_tokens", None)
        if snapshot is None:
            raise ComponentError(
                f"{name_of(self)} anchors the student's patch Gram matrix to a Gram teacher's: target.snapshot_tokens, "
                "the tokens of an earlier copy of the momentum target, is missing; the recipe needs a target: section "
                "with a snapshot (e.g. target: {momentum: 0.996, snapshot: {every: 10000}})")
        if len(snapshot) != len(views):
            raise ComponentError(f"{name_of(self)} got the Gram teacher's tokens of {len(snapshot)} views for "
                                 f"{len(views)} global views; it needs one per global view")
        student, teacher, selected = [], [], [] if self.tokens_used != "all" else None
        for i, tokens in zip(views, snapshot):
            mine = online[i]
            rows, columns = mine.grid
            theirs = resize_patch_grid(tokens.patches, tokens.grid, mine.grid, mode=self.resize_mode,
                                       antialias=self.resize_antialias)
            if mine.patches.shape[1] != rows * columns:  # hidden patches dropped (masking.hidden: drop)
                if self.tokens_used != "all":
                    raise ComponentError(
                        f"{name_of(self)} with tokens_used: {self.tokens_used} selects patches of the whole {rows} x "
                        f"{columns} grid, but the student's tokens of view {i} hold only the visible ones: set "
                        "masking.hidden: mask_token (DINOv3 replaces hidden patches by the mask token)")
                # The visible patches only: the Gram teacher's at the same places (raster order, as kept).
                index = self._visible_index(out, i)
                theirs = theirs.gather(1, index.unsqueeze(-1).expand(-1, -1, theirs.shape[-1]))
            if theirs.shape != mine.patches.shape:
                raise ComponentError(f"{name_of(self)} needs the Gram teacher's patch tokens of view {i} shaped like the "
                                     f"student's, {tuple(mine.patches.shape)}; got {tuple(theirs.shape)}")
            student.append(mine.patches)
            teacher.append(theirs)
            if selected is not None:
                masks = getattr(out, "masks", None)
                if masks is None or masks[i] is None or tuple(masks[i].visible.shape) != tuple(mine.patches.shape[:2]):
                    raise ComponentError(f"{name_of(self)} with tokens_used: {self.tokens_used} needs the mask of every "
                                         "global view over its patch grid: the recipe needs a masking: section")
                visible = masks[i].visible
                selected.append(~visible if self.tokens_used == "masked" else visible)
        return student, teacher, selected

    def _visible_index(self, out: Any, view: int) -> Tensor:
        masks = getattr(out, "masks", None)
        if masks is None or masks[view] is None:
            raise ComponentError(f"{name_of(self)} got the visible patches of view {view} only, without its mask: the "
                                 "recipe needs a masking: section")
        return masks[view].visible_index
