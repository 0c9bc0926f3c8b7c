"""clrun/ibot against an independent float64 NumPy implementation of the official ``iBOTLoss``.

Reference: Zhou et al. (2022), "iBOT" (bytedance/ibot, main_ibot.py ``iBOTLoss.forward``): the student's
class outputs of all crops against the teacher's of the global crops (pairs v != q, DINO's term), and
for v == q the patch term: per image, the cross-entropy of the teacher's centered, sharpened patch
outputs with the student's, summed over the masked patches and divided by their count (at least 1),
averaged over the batch; each part averaged over its terms and weighted by lambda1, lambda2; then the
centers move: ``center`` over the teacher's class outputs, ``center2`` over its patch outputs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import clrun
from clrun import ComponentError, Masks
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def numpy_ibot(s_cls, s_patch, t_cls, t_patch, masks, center, center2, temps, lambdas=(1.0, 1.0), m=(0.9, 0.9)):
    """temps: (student, teacher, teacher patch). masks[q]: (B, L) bool, True where hidden."""
    student_temp, teacher_temp, teacher_temp2 = temps
    t_cls_c = [softmax((t - center) / teacher_temp) for t in t_cls]
    t_patch_c = [softmax((t - center2) / teacher_temp2) for t in t_patch]
    loss1 = loss2 = 0.0
    n1 = n2 = 0
    for q in range(len(t_cls_c)):
        for v in range(len(s_cls)):
            if v == q:
                per_patch = np.sum(-t_patch_c[q] * log_softmax(s_patch[v] / student_temp), axis=-1)
                mask = masks[v].astype(float)
                loss2 += np.mean(np.sum(per_patch * mask, axis=-1) / np.maximum(mask.sum(axis=-1), 1.0))
                n2 += 1
            else:
                loss1 += np.mean(np.sum(-t_cls_c[q] * log_softmax(s_cls[v] / student_temp), axis=-1))
                n1 += 1
    loss1, loss2 = loss1 / n1 * lambdas[0], loss2 / n2 * lambdas[1]
    new_center = center * m[0] + np.concatenate(t_cls).mean(axis=0) * (1 - m[0])
    new_center2 = center2 * m[1] + np.concatenate(t_patch).reshape(-1, t_patch[0].shape[-1]).mean(axis=0) * (1 - m[1])
    return loss1 + loss2, loss1, loss2, new_center, new_center2


def draw(seed, local_views, batch=4, patches=6, dim=5):
    rng = np.random.default_rng(seed)
    views = 2 + local_views
    s_cls = [rng.normal(size=(batch, dim)) * 2 for _ in range(views)]
    s_patch = [rng.normal(size=(batch, patches, dim)) * 2 for _ in range(2)]
    t_cls = [rng.normal(size=(batch, dim)) * 2 for _ in range(2)]
    t_patch = [rng.normal(size=(batch, patches, dim)) * 2 for _ in range(2)]
    masks = [rng.random((batch, patches)) < 0.5 for _ in range(2)]
    masks[0][0] = False  # an image with no hidden patch: its term is 0 (divided by max(count, 1))
    return s_cls, s_patch, t_cls, t_patch, masks


def outputs(s_cls, s_patch, t_cls, t_patch, masks, local_views, step=0):
    flags = [True, True] + [False] * local_views
    cls = [torch.tensor(x, requires_grad=True) for x in s_cls]
    patch = [torch.tensor(x, requires_grad=True) for x in s_patch]
    mask_objs = [Masks(torch.tensor(~m), torch.tensor(m).unsqueeze(1)) for m in masks] + [None] * local_views
    out = step_outputs(cls, flags, target_projections=[torch.tensor(t) for t in t_cls], step=step,
                       masks=mask_objs, token_projections=patch + [None] * local_views,
                       target_token_projections=[torch.tensor(t) for t in t_patch])
    return out, cls, patch


@pytest.mark.parametrize("local_views", [0, 2])
def test_loss_and_both_centers_match_the_official_code_over_several_steps(local_views):
    loss_fn = clrun.create("loss", "clrun/ibot", in_dim=5, teacher_temperature=0.05, student_temperature=0.2,
                           teacher_patch_temperature=0.07, lambda_patch=0.5).double()
    center, center2 = np.zeros(5), np.zeros(5)
    for step in range(3):
        data = draw(step, local_views)
        total, cls_part, patch_part, center, center2 = numpy_ibot(*data, center, center2, (0.2, 0.05, 0.07), (1.0, 0.5))
        result = loss_fn(outputs(*data, local_views, step)[0])
        ref.assert_close(result["loss"].item(), total)
        ref.assert_close(result["cls_loss"].item(), cls_part)
        ref.assert_close(result["patch_loss"].item(), patch_part)
        ref.assert_close(loss_fn.center.numpy(), center)
        ref.assert_close(loss_fn.patch_center.numpy(), center2)


def test_gradients_reach_the_students_class_and_patch_outputs_and_match_finite_differences():
    s_cls, s_patch, t_cls, t_patch, masks = draw(7, 1)
    center, center2 = np.random.default_rng(8).normal(size=(2, 5))
    loss_fn = clrun.create("loss", "clrun/ibot", in_dim=5, teacher_temperature=0.1, teacher_patch_temperature=0.08).double()
    loss_fn.center.copy_(torch.tensor(center))
    loss_fn.patch_center.copy_(torch.tensor(center2))
    out, cls, patch = outputs(s_cls, s_patch, t_cls, t_patch, masks, 1)
    loss_fn(out)["loss"].backward()

    def total(arrays):
        return numpy_ibot(arrays[:3], arrays[3:], t_cls, t_patch, masks, center, center2, (0.1, 0.1, 0.08))[0]

    expected = ref.central_difference(total, [*s_cls, *s_patch])
    for leaf, grad in zip([*cls, *patch], expected):
        ref.assert_close(leaf.grad.numpy(), grad, rtol=1e-6, atol_scale=1e-6)
    assert patch[0].grad[0].abs().sum() == 0  # the image without a hidden patch adds nothing


def test_a_recipe_without_masked_patch_outputs_is_told_what_to_add():
    loss_fn = clrun.create("loss", "clrun/ibot", in_dim=5)
    out = step_outputs([torch.randn(4, 5)] * 2, target_projections=[torch.randn(4, 5)] * 2)
    with pytest.raises(ComponentError) as info:
        loss_fn(out)
    assert str(info.value) == (
        "clrun/ibot compares the head's outputs of masked patch tokens with the target's: the recipe needs a "
        "masking: section (e.g. generator: {name: clrun/block_mask}), a ViT backbone "
        "with mask_token: true, and a target: section")


def test_defaults_are_the_papers():
    loss_fn = clrun.create("loss", "clrun/ibot", in_dim=8)
    assert (loss_fn.teacher_temperature, loss_fn.student_temperature, loss_fn.teacher_patch_temperature) == (0.04, 0.1, 0.04)
    assert (loss_fn.center_momentum, loss_fn.patch_center_momentum, loss_fn.lambda_cls, loss_fn.lambda_patch) == (0.9, 0.9, 1.0, 1.0)
    with pytest.raises(ComponentError, match=r"^clrun\.create\('loss', 'clrun/ibot'\): patch_center_momentum: must be a "
                                             r"number >= 0 and <= 1 \(iBOT uses 0.9\), got 1.5$"):
        clrun.create("loss", "clrun/ibot", in_dim=8, patch_center_momentum=1.5)
