"""clrun/dino and clrun/dino_head against independent float64 NumPy implementations.

Reference: Caron et al. (2021), "Emerging Properties in Self-Supervised Vision Transformers",
algorithm 1, written out as the official ``DINOLoss`` computes it (facebookresearch/dino, main_dino.py):
the student's outputs of all crops and the teacher's of the 2 global crops, concatenated in crop order
and chunked; the pair (teacher crop iq, student crop v) is skipped when v == iq; the sum of the pairs'
mean cross-entropies divided by their number; then ``center = m center + (1 - m) mean(teacher)``.
Gradients w.r.t. the student's outputs are central finite differences of that reference; the teacher
is a stop-gradient. What every loss promises (detached metrics, fp32 under autocast, state in
buffers...) is checked for all losses by tests/unit/testing/test_loss_contracts.py, and DDP's gradients and center
by tests/distributed/test_distributed.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import clrun
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def numpy_dino(student: list[np.ndarray], teacher: list[np.ndarray], center: np.ndarray, teacher_temp: float,
               student_temp: float, momentum: float) -> tuple[float, np.ndarray]:
    """The official DINOLoss.forward, its crops in order (the global ones first), in float64."""
    student_out = [s / student_temp for s in student]
    teacher_out = [softmax((t - center) / teacher_temp) for t in teacher]
    total, terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total += np.mean(np.sum(-q * log_softmax(student_out[v]), axis=-1))
            terms += 1
    batch_center = np.concatenate(teacher).sum(axis=0) / sum(len(t) for t in teacher)
    return total / terms, center * momentum + batch_center * (1 - momentum)


def draw(seed: int, views: int, batch: int = 6, dim: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, dim)) * 3 for _ in range(views)]


@pytest.mark.parametrize("local_views", [0, 3])
def test_loss_and_center_match_the_official_code_over_several_steps(local_views):
    loss_fn = clrun.create("loss", "clrun/dino", in_dim=10, teacher_temperature=0.05, student_temperature=0.2,
                           center_momentum=0.8).double()
    center = np.zeros(10)
    for step in range(3):  # the center moves: each step's loss uses the previous steps' center
        student, teacher = draw(2 * step, 2 + local_views), draw(2 * step + 1, 2)
        expected, center = numpy_dino(student, teacher, center, 0.05, 0.2, 0.8)
        out = loss_fn(step_outputs([torch.tensor(s) for s in student], [True, True] + [False] * local_views,
                                   target_projections=[torch.tensor(t) for t in teacher], step=step))
        ref.assert_close(out["loss"].item(), expected)
        ref.assert_close(loss_fn.center.numpy(), center)


def test_gradients_reach_the_student_only_and_match_finite_differences():
    student, teacher = draw(5, 3, batch=4, dim=5), draw(6, 2, batch=4, dim=5)
    center = np.random.default_rng(7).normal(size=5)
    loss_fn = clrun.create("loss", "clrun/dino", in_dim=5, teacher_temperature=0.07).double()
    loss_fn.center.copy_(torch.tensor(center))
    leaves = [torch.tensor(s, requires_grad=True) for s in student]
    targets = [torch.tensor(t, requires_grad=True) for t in teacher]
    loss_fn(step_outputs(leaves, [True, True, False], target_projections=targets))["loss"].backward()
    expected = ref.central_difference(lambda s: numpy_dino(s, teacher, center, 0.07, 0.1, 0.9)[0], student)
    for leaf, grad in zip(leaves, expected):
        ref.assert_close(leaf.grad.numpy(), grad, rtol=1e-6, atol_scale=1e-6)
    assert all(t.grad is None for t in targets)


def test_the_metrics_tell_the_two_collapses_apart():
    loss_fn = clrun.create("loss", "clrun/dino", in_dim=8, teacher_temperature=0.04)
    uniform = [torch.zeros(16, 8)] * 2  # every prototype equally likely
    one_hot = [torch.tensor([[10.0] + [0.0] * 7]).repeat(16, 1)] * 2  # prototype 0 for every image
    flat = loss_fn.eval()(step_outputs(uniform, target_projections=uniform))
    peaked = loss_fn.eval()(step_outputs(one_hot, target_projections=one_hot))
    assert flat["teacher_entropy"].item() == pytest.approx(np.log(8))
    assert peaked["teacher_entropy"].item() < 1e-3 and peaked["top_prototype_share"].item() == 1.0
    # KL(P_t || P_s) is the loss minus the teacher's entropy; 0 when the student matches a uniform teacher.
    assert flat["teacher_kl"].item() == pytest.approx(0.0, abs=1e-6)


def test_eval_mode_leaves_the_center_alone():
    loss_fn = clrun.create("loss", "clrun/dino", in_dim=4).eval()
    views = [torch.randn(3, 4), torch.randn(3, 4)]
    loss_fn(step_outputs(views, target_projections=views))
    assert torch.equal(loss_fn.center, torch.zeros(4))


@pytest.mark.parametrize("settings, message", [
    ({"teacher_temperature": 1e-4}, "clrun.create('loss', 'clrun/dino'): teacher_temperature: must be a number >= 0.001 "
                                    "(DINO uses 0.04 to 0.07), got 0.0001: the logits are similarities"),
    ({"center_momentum": 1.5}, "clrun.create('loss', 'clrun/dino'): center_momentum: must be a number >= 0 and <= 1 "
                               "(DINO uses 0.9; 1 turns centering off), got 1.5"),
])
def test_bad_settings_are_refused_naming_the_argument(settings, message):
    with pytest.raises(clrun.ComponentError) as error:
        clrun.create("loss", "clrun/dino", in_dim=8, **settings)
    assert str(error.value).startswith(message)  # the declared range, checked like a recipe entry
    assert error.value.argument == next(iter(settings))


# -- the head ------------------------------------------------------------------------------------------
def gelu(x: np.ndarray) -> np.ndarray:
    from math import erf
    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def test_head_computes_mlp_normalize_and_unit_prototypes():
    head = clrun.create("projector", "clrun/dino_head", in_dim=6, out_dim=9, hidden_dim=7, bottleneck_dim=5,
                        num_layers=3).double()
    x = np.random.default_rng(0).normal(size=(4, 6))
    w = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in head.mlp if isinstance(m, torch.nn.Linear)]
    h = gelu(x @ w[0][0].T + w[0][1])
    h = gelu(h @ w[1][0].T + w[1][1])
    h = h @ w[2][0].T + w[2][1]
    h = h / np.linalg.norm(h, axis=1, keepdims=True)
    v = head.last_layer.parametrizations.weight.original1.detach().numpy()
    prototypes = v / np.linalg.norm(v, axis=1, keepdims=True)  # g = 1: unit-length rows
    ref.assert_close(head(torch.tensor(x)).detach().numpy(), h @ prototypes.T, rtol=1e-9)
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "last_layer.parametrizations.weight.original0" not in trainable  # the gains stay 1
    assert "last_layer.parametrizations.weight.original1" in trainable


def test_head_init_is_dinos():
    head = clrun.create("projector", "clrun/dino_head", in_dim=384)  # the defaults: 2048, 256, 65536
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(2048, 384), (2048, 2048), (256, 2048)]
    assert all(m.bias.abs().max() == 0 for m in linears)
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05) and weights.abs().max() <= 2.0
    assert head.last_layer.parametrizations.weight.original1.shape == (65536, 256)
    unfrozen = clrun.create("projector", "clrun/dino_head", in_dim=8, out_dim=4, norm_last_layer=False)
    assert unfrozen.last_layer.parametrizations.weight.original0.requires_grad
