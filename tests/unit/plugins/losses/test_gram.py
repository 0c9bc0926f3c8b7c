"""clrun/gram_anchoring and ``gram_loss`` against an independent float64 NumPy version of DINOv3's code.

Reference: Siméoni et al. (2025), "DINOv3" (facebookresearch/dinov3): ``GramLoss.forward``
(dinov3/loss/gram_loss.py:34-84), transcribed line by line in ``numpy_gram_loss``: the features cast
and L2-normalized, flattened to (B N, D) at the batch level, both Gram matrices, the negative similarities
zeroed as the options say (in the official order), and ``nn.MSELoss`` (the mean). The selections of
``tokens_used: masked / unmasked`` are ``student[masks]`` (ssl_meta_arch.py:515-520). The Gram teacher's
features on a finer grid are resized by ``F.interpolate(..., mode="bicubic", align_corners=False,
antialias=False)`` (ssl_meta_arch.py:499-506): ``numpy_bicubic`` is that interpolation written out
(Keys' cubic convolution with a = -0.75, source index ``(o + 0.5) * in / out - 0.5``, edges clamped).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import clrun
from clrun import ComponentError, Masks, Tokens
from clrun.plugins.losses.gram import GramAnchoring, gram_loss, resize_patch_grid

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def numpy_gram_loss(output_feats, target_feats, img_level=True, apply_norm=True, remove_neg=False,
                    remove_only_teacher_neg=False):
    """GramLoss(apply_norm, remove_neg, remove_only_teacher_neg).forward(output_feats, target_feats, img_level)."""
    output_feats = np.array(output_feats, dtype=np.float64)
    target_feats = np.array(target_feats, dtype=np.float64)

    def normalize(x):  # F.normalize(x, dim=-1): x / max(||x||, 1e-12)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    if apply_norm:
        target_feats = normalize(target_feats)
    if not img_level and target_feats.ndim == 3:
        target_feats = target_feats.reshape(-1, target_feats.shape[-1])
    target_sim = target_feats @ np.swapaxes(target_feats, -1, -2)
    if apply_norm:
        output_feats = normalize(output_feats)
    if not img_level and output_feats.ndim == 3:
        output_feats = output_feats.reshape(-1, output_feats.shape[-1])
    student_sim = output_feats @ np.swapaxes(output_feats, -1, -2)
    if remove_neg:
        target_sim[target_sim < 0] = 0.0
        student_sim[student_sim < 0] = 0.0
    elif remove_only_teacher_neg:
        target_sim[target_sim < 0] = 0.0
        student_sim[(student_sim < 0) & (target_sim < 0)] = 0.0
    return float(np.mean((student_sim - target_sim) ** 2))


def numpy_bicubic_matrix(n_in, n_out, a=-0.75):
    """(n_out, n_in): PyTorch's 1-d bicubic resampling, align_corners=False, no antialias."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    matrix = np.zeros((n_out, n_in))
    for o in range(n_out):
        source = (o + 0.5) * n_in / n_out - 0.5
        first = math.floor(source)
        t = source - first
        for offset, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[o, min(max(first + offset, 0), n_in - 1)] += w
    return matrix


def numpy_bicubic(patches, from_grid, to_grid):
    """Tokens (B, h*w, D) resampled to to_grid, (B, H*W, D), separably along rows and columns."""
    batch, _, dim = patches.shape
    maps = patches.reshape(batch, *from_grid, dim)
    rows, columns = numpy_bicubic_matrix(from_grid[0], to_grid[0]), numpy_bicubic_matrix(from_grid[1], to_grid[1])
    return np.einsum("Hh,bhwd,Ww->bHWd", rows, maps, columns).reshape(batch, to_grid[0] * to_grid[1], dim)


def draw(seed, shape, shift=0.0):
    return np.random.default_rng(seed).normal(size=shape) + shift


NEGATIVES = {"none": {}, "both": {"remove_neg": True}, "teacher": {"remove_only_teacher_neg": True}}
TORCH_NEGATIVES = {"none": {}, "both": {"remove_negatives": True}, "teacher": {"remove_only_teacher_negatives": True}}


@pytest.mark.parametrize("negatives", list(NEGATIVES))
@pytest.mark.parametrize("image_level", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 7, 6)])
def test_the_value_is_the_official_codes(shape, normalize, image_level, negatives):
    student, teacher = draw(0, shape), draw(1, shape, shift=0.3)
    expected = numpy_gram_loss(student, teacher, image_level, normalize, **NEGATIVES[negatives])
    got = gram_loss(torch.tensor(student), torch.tensor(teacher), normalize=normalize, image_level=image_level,
                    **TORCH_NEGATIVES[negatives])
    assert got.dtype == torch.float64 and got.ndim == 0
    ref.assert_close(got.item(), expected)


def test_removing_only_the_teachers_negatives_leaves_the_students_gram_as_it_is():
    # The official student mask tests the teacher's similarities after they were zeroed: it is never true.
    student, teacher = draw(2, (2, 6, 3)), draw(3, (2, 6, 3))
    plain = numpy_gram_loss(student, teacher)
    teacher_only = numpy_gram_loss(student, teacher, remove_only_teacher_neg=True)
    both = numpy_gram_loss(student, teacher, remove_neg=True)
    assert len({round(plain, 12), round(teacher_only, 12), round(both, 12)}) == 3
    got = gram_loss(torch.tensor(student), torch.tensor(teacher), remove_only_teacher_negatives=True)
    ref.assert_close(got.item(), teacher_only)


@pytest.mark.parametrize("tokens_used", ["masked", "unmasked"])
@pytest.mark.parametrize("negatives", ["none", "both"])
def test_a_selection_of_patches_is_the_officials_boolean_index_at_the_batch_level(tokens_used, negatives):
    student, teacher = draw(4, (3, 6, 5)), draw(5, (3, 6, 5))
    hidden = np.random.default_rng(6).random((3, 6)) < 0.4
    chosen = hidden if tokens_used == "masked" else ~hidden
    expected = numpy_gram_loss(student[chosen], teacher[chosen], img_level=False, **NEGATIVES[negatives])
    got = gram_loss(torch.tensor(student), torch.tensor(teacher), image_level=False, selected=torch.tensor(chosen),
                    **TORCH_NEGATIVES[negatives])
    ref.assert_close(got.item(), expected)


@pytest.mark.parametrize("options", [
    dict(),
    dict(image_level=False, remove_negatives=True),
    dict(normalize=False, remove_only_teacher_negatives=True),
    dict(image_level=False, selected=True),
])
def test_gradients_match_central_differences_of_the_official_formula(options):
    student, teacher = draw(7, (2, 4, 3), shift=0.2), draw(8, (2, 4, 3), shift=-0.1)
    chosen = np.array([[True, False, True, True], [False, True, True, False]])
    selected = options.pop("selected", False)
    numpy_options = {"img_level": options.get("image_level", True), "apply_norm": options.get("normalize", True),
                     "remove_neg": options.get("remove_negatives", False),
                     "remove_only_teacher_neg": options.get("remove_only_teacher_negatives", False)}

    def official(arrays):
        s = arrays[0][chosen] if selected else arrays[0]
        return numpy_gram_loss(s, teacher[chosen] if selected else teacher, **numpy_options)

    leaf = torch.tensor(student, requires_grad=True)
    gram_loss(leaf, torch.tensor(teacher), selected=torch.tensor(chosen) if selected else None, **options).backward()
    (expected,) = ref.central_difference(official, [student])
    ref.assert_close(leaf.grad.numpy(), expected, rtol=1e-6, atol_scale=1e-6)


def test_the_teacher_gets_no_gradient_and_the_student_does():
    student = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    gram_loss(student, teacher, image_level=False).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_float32_at_least_also_under_autocast_and_on_bf16_inputs():
    student, teacher = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    plain = gram_loss(student, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = gram_loss(student, teacher)
    assert plain.dtype == under.dtype == torch.float32
    torch.testing.assert_close(under, plain)
    half = gram_loss(student.bfloat16(), teacher.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, gram_loss(student.bfloat16().float(), teacher.bfloat16().float()))


@pytest.mark.parametrize("from_grid, to_grid", [((8, 6), (4, 3)), ((6, 6), (4, 4)), ((3, 5), (6, 7))])
def test_the_resize_is_the_official_bicubic_interpolation(from_grid, to_grid):
    patches = draw(9, (2, from_grid[0] * from_grid[1], 3))
    got = resize_patch_grid(torch.tensor(patches), from_grid, to_grid)
    ref.assert_close(got.numpy(), numpy_bicubic(patches, from_grid, to_grid))
    # The official call itself, on the (B, D, h, w) map (ssl_meta_arch.py:499-509).
    maps = torch.tensor(patches).transpose(-2, -1).unflatten(-1, from_grid)
    official = torch.nn.functional.interpolate(maps, size=to_grid, mode="bicubic", align_corners=False, antialias=False)
    torch.testing.assert_close(got, official.flatten(-2, -1).transpose(-2, -1), rtol=0, atol=0)


def test_halving_a_ramp_gives_the_centres_of_the_2x2_blocks_inside_the_grid():
    rows = np.repeat(np.arange(8.0), 8).reshape(1, 64, 1)  # feature = row index, 8 x 8 grid
    got = resize_patch_grid(torch.tensor(rows), (8, 8), (4, 4)).numpy().reshape(4, 4)
    np.testing.assert_allclose(got[1:3], [[2.5] * 4, [4.5] * 4], atol=1e-12)  # cubic convolution keeps lines
    constant = resize_patch_grid(torch.full((1, 64, 2), 3.0), (8, 8), (4, 4))
    torch.testing.assert_close(constant, torch.full((1, 16, 2), 3.0))
    same = torch.randn(1, 6, 2)
    assert resize_patch_grid(same, (2, 3), (2, 3)) is same


def test_antialias_and_other_modes_are_the_interpolation_with_those_settings():
    patches = torch.randn(1, 64, 3, dtype=torch.float64)
    maps = patches.transpose(-2, -1).unflatten(-1, (8, 8))
    for mode, antialias, extra in (("bicubic", True, {"align_corners": False}), ("bilinear", False, {"align_corners": False}),
                                   ("nearest", False, {}), ("area", False, {})):
        expected = torch.nn.functional.interpolate(maps, size=(4, 4), mode=mode, antialias=antialias, **extra)
        got = resize_patch_grid(patches, (8, 8), (4, 4), mode=mode, antialias=antialias)
        torch.testing.assert_close(got, expected.flatten(-2, -1).transpose(-2, -1), rtol=0, atol=0)


# ------------------------------------------------------------------ the loss component around another loss


class Inner(nn.Module):
    """A trivial inner loss: the mean of the projections, a metric, and the attributes a loss declares."""

    reads = frozenset({"online.projections"})
    main_metric = "inner_metric"
    collapse_signals = (clrun.loss_kit.CollapseSignal("inner_metric", 0.5, above=True, meaning="test"),)

    def forward(self, out):
        value = torch.stack([p.mean() for p in out.online.projections]).sum()
        return {"loss": value, "inner_metric": value.detach() * 2}


def tokens(patches, grid):
    return Tokens(prefix=patches[:, :1], patches=patches, grid=grid, pooled=patches.mean(dim=1))


def stand_in(batch=2, grid=(2, 3), teacher_grid=None, dim=4, seed=0, dropped=False):
    """A minimal ``out``: two global views and a local one, the student's tokens of the global views (full grid,
    hidden patches by the mask token), the Gram teacher's (``target.snapshot_tokens``), masks and projections."""
    generator = torch.Generator().manual_seed(seed)
    teacher_grid = teacher_grid or grid
    n, nt = grid[0] * grid[1], teacher_grid[0] * teacher_grid[1]
    student = [torch.randn(batch, n - (1 if dropped else 0), dim, generator=generator, dtype=torch.float64).requires_grad_()
               for _ in range(2)]
    teacher = [torch.randn(batch, nt, dim, generator=generator, dtype=torch.float64) for _ in range(2)]
    visible = [torch.rand(batch, n, generator=generator) < 0.5 for _ in range(2)]
    projections = [torch.randn(batch, 3, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(3)]
    return SimpleNamespace(
        is_global=[True, False, True],  # views 0 and 2 are global: global-view order is 0, 2
        online=SimpleNamespace(tokens=[tokens(student[0], grid), None, tokens(student[1], grid)], projections=projections),
        target=SimpleNamespace(snapshot_tokens=[tokens(t, teacher_grid) for t in teacher]),
        masks=[Masks(visible[0], (~visible[0]).unsqueeze(1)), None, Masks(visible[1], (~visible[1]).unsqueeze(1))],
    ), student, teacher, visible


def test_the_wrapper_adds_the_weighted_term_to_the_inner_loss_and_forwards_what_the_inner_loss_declares():
    wrapper = GramAnchoring(loss=Inner(), weight=0.7)
    out, student, teacher, _ = stand_in()
    result = wrapper(out)
    inner = Inner()(out)
    term = numpy_gram_loss(torch.cat(student).detach().numpy(), torch.cat(teacher).numpy())
    ref.assert_close(result["loss"].item(), inner["loss"].item() + 0.7 * term)
    ref.assert_close(result["gram_loss"].item(), term)
    assert not result["gram_loss"].requires_grad
    assert result["inner_metric"].item() == inner["inner_metric"].item()
    assert set(result) == {"loss", "inner_metric", "gram_loss"}
    assert wrapper.reads == {"online.projections", "online.tokens", "target.snapshot_tokens", "masks"}
    assert wrapper.main_metric == "inner_metric" and wrapper.collapse_signals == Inner.collapse_signals
    result["loss"].backward()
    assert all(s.grad is not None for s in student) and out.online.projections[1].grad is not None


def test_an_inner_loss_that_returns_a_tensor_gets_a_dict_and_the_batch_level_term():
    class Plain(nn.Module):
        def forward(self, out):
            return out.online.projections[0].sum()

    wrapper = GramAnchoring(loss=Plain(), weight=1.5, image_level=False, remove_negatives=True)
    out, student, teacher, _ = stand_in(seed=1)
    result = wrapper(out)
    term = numpy_gram_loss(torch.cat(student).detach().numpy(), torch.cat(teacher).numpy(), img_level=False, remove_neg=True)
    ref.assert_close(result["loss"].item(), out.online.projections[0].sum().item() + 1.5 * term)
    assert set(result) == {"loss", "gram_loss"} and wrapper.reads is None and wrapper.main_metric is None


@pytest.mark.parametrize("tokens_used", ["masked", "unmasked"])
def test_tokens_used_selects_the_hidden_or_the_visible_patches_of_the_masks(tokens_used):
    wrapper = GramAnchoring(loss=Inner(), weight=1.0, image_level=False, tokens_used=tokens_used)
    assert "masks" in wrapper.reads
    out, student, teacher, visible = stand_in(seed=2)
    chosen = torch.cat(visible).numpy()
    chosen = ~chosen if tokens_used == "masked" else chosen
    term = numpy_gram_loss(torch.cat(student).detach().numpy()[chosen], torch.cat(teacher).numpy()[chosen], img_level=False)
    ref.assert_close(wrapper(out)["gram_loss"].item(), term)


def test_with_hidden_patches_dropped_the_term_covers_the_visible_ones():
    generator = torch.Generator().manual_seed(4)
    grid, batch, dim = (2, 3), 2, 4
    visible = torch.tensor([[True, False, True, True, False, False], [False, True, True, False, True, False]])
    kept = [torch.randn(batch, 3, dim, generator=generator, dtype=torch.float64) for _ in range(2)]
    teacher = [torch.randn(batch, 6, dim, generator=generator, dtype=torch.float64) for _ in range(2)]
    masks = Masks(visible, (~visible).unsqueeze(1))
    out = SimpleNamespace(is_global=[True, True], masks=[masks, masks],
                          online=SimpleNamespace(tokens=[tokens(k, grid) for k in kept]),
                          target=SimpleNamespace(snapshot_tokens=[tokens(t, grid) for t in teacher]))
    at_visible = [t.numpy()[visible.numpy()].reshape(batch, 3, dim) for t in teacher]
    term = numpy_gram_loss(torch.cat(kept).numpy(), np.concatenate(at_visible))
    ref.assert_close(GramAnchoring(loss=Inner(), weight=1.0).gram_term(out).item(), term)


def test_a_gram_teacher_on_a_finer_grid_is_resized_to_the_students():
    wrapper = GramAnchoring(loss=Inner(), weight=1.0)
    out, student, teacher, _ = stand_in(grid=(2, 3), teacher_grid=(4, 6), seed=3)
    resized = [numpy_bicubic(t.numpy(), (4, 6), (2, 3)) for t in teacher]
    term = numpy_gram_loss(torch.cat(student).detach().numpy(), np.concatenate(resized))
    ref.assert_close(wrapper(out)["gram_loss"].item(), term)


def test_built_from_a_recipe_entry_with_a_nested_loss_and_the_official_defaults():
    wrapper = clrun.create("loss", "clrun/gram_anchoring", loss={"name": "clrun/ntxent", "temperature": 0.2}, in_dim=8)
    assert wrapper.loss.temperature == 0.2 and wrapper.main_metric == "contrastive_acc"
    assert (wrapper.weight, wrapper.normalize, wrapper.image_level, wrapper.remove_negatives,
            wrapper.remove_only_teacher_negatives, wrapper.tokens_used, wrapper.resize_mode,
            wrapper.resize_antialias) == (2.0, True, True, False, False, "all", "bicubic", False)
    with pytest.raises(ComponentError, match="tokens_used: masked compares the selected patches"):
        clrun.create("loss", "clrun/gram_anchoring", loss={"name": "clrun/ntxent"}, tokens_used="masked")
    with pytest.raises(ComponentError, match="exclude each other"):
        GramAnchoring(loss=Inner(), remove_negatives=True, remove_only_teacher_negatives=True)


def test_an_inner_loss_that_needs_in_dim_gets_the_projection_width():
    wrapper = clrun.create("loss", "clrun/gram_anchoring", loss={"name": "clrun/dino"}, in_dim=8)
    assert wrapper.loss.in_dim == 8


def test_what_the_recipe_lacks_is_said():
    wrapper = GramAnchoring(loss=Inner())
    out, *_ = stand_in()
    out.target = SimpleNamespace()
    with pytest.raises(ComponentError, match="target.snapshot_tokens, the tokens of an earlier copy"):
        wrapper(out)
    out, *_ = stand_in(dropped=True)
    with pytest.raises(ComponentError, match="hold only the visible ones: set masking.hidden: mask_token"):
        GramAnchoring(loss=Inner(), image_level=False, tokens_used="masked")(out)
    out, *_ = stand_in()
    out.online.tokens = None
    with pytest.raises(ComponentError, match="masking: section with hidden: mask_token"):
        wrapper(out)
