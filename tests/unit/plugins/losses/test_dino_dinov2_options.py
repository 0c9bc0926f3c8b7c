"""clrun/dino's DINOv2 options against independent float64 NumPy implementations.

References: Oquab et al. (2023), "DINOv2" (arXiv:2304.07193), as facebookresearch/dinov2 computes them:
- ``sinkhorn_knopp_teacher``: ``Q = exp(t / teacher_temp)^T`` over the global crops' teacher outputs
  together, normalized to total mass 1, then 3 rounds of (rows to 1/K, columns to 1/B), times B;
  no center.
- ``KoLeoLoss``: unit vectors, each one's nearest other vector by inner product, the distance
  ``||u - v + eps||`` (torch's PairwiseDistance), ``-mean log(distance + eps)``; summed over the global
  crops' class tokens and weighted (DINOv2: 0.1).
The plain DINO loss is tests/unit/plugins/losses/test_dino.py's; DDP's gradients with both options are in
tests/helpers/ddp_worker.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import clrun
from clrun import ComponentError, StepOutputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def sinkhorn_teacher(teacher: np.ndarray, temp: float, iterations: int) -> np.ndarray:
    q = np.exp(teacher / temp).T  # K x B
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def koleo(x: np.ndarray, eps: float = 1e-8) -> float:
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    total = 0.0
    for n in range(len(u)):
        others = [m for m in range(len(u)) if m != n]
        nearest = max(others, key=lambda m: float(u[n] @ u[m]))
        total += -np.log(np.linalg.norm(u[n] - u[nearest] + eps) + eps)
    return total / len(u)


def numpy_dinov2(student, teacher, features, teacher_temp, student_temp, iterations, koleo_weight):
    codes = np.split(sinkhorn_teacher(np.concatenate(teacher), teacher_temp, iterations), len(teacher))
    terms = [np.mean(np.sum(-q * log_softmax(student[v] / student_temp), axis=-1))
             for i, q in enumerate(codes) for v in range(len(student)) if v != i]
    spread = sum(koleo(features[i]) for i in range(len(teacher)))
    return float(np.mean(terms)) + koleo_weight * spread, spread


def draw(seed: int, views: int, batch: int, dim: int, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, dim)) * scale for _ in range(views)]


def outputs(student, teacher, features, flags) -> tuple[StepOutputs, list[torch.Tensor], list[torch.Tensor]]:
    s = [torch.tensor(x, requires_grad=True) for x in student]
    f = [torch.tensor(x, requires_grad=True) for x in features]
    return StepOutputs(f, s, flags, None, [torch.tensor(t) for t in teacher]), s, f


@pytest.mark.parametrize("local_views,iterations,koleo_weight", [(0, 3, 0.1), (2, 3, 0.0), (1, 5, 1.0)])
def test_sinkhorn_centering_and_koleo_match_dinov2(local_views, iterations, koleo_weight):
    views, batch, dim = 2 + local_views, 5, 7
    student, teacher, features = draw(1, views, batch, dim, 2.0), draw(2, 2, batch, dim, 2.0), draw(3, views, batch, 4)
    loss_fn = clrun.create("loss", "clrun/dino", in_dim=dim, teacher_temperature=0.3, student_temperature=0.2,
                           centering="sinkhorn", sinkhorn_iterations=iterations, koleo_weight=koleo_weight).double()
    out, s, f = outputs(student, teacher, features, [True, True] + [False] * local_views)
    result = loss_fn(out)
    expected, spread = numpy_dinov2(student, teacher, features, 0.3, 0.2, iterations, koleo_weight)
    ref.assert_close(result["loss"].item(), expected)
    if koleo_weight:
        ref.assert_close(result["koleo"].item(), spread)
    else:
        assert "koleo" not in result
    assert torch.count_nonzero(loss_fn.center) == 0  # Sinkhorn-Knopp replaces the center: it never moves
    result["loss"].backward()
    f_grads = ref.central_difference(
        lambda fs: numpy_dinov2(student, teacher, fs, 0.3, 0.2, iterations, koleo_weight)[0], features)
    s_grads = ref.central_difference(
        lambda ss: numpy_dinov2(ss, teacher, features, 0.3, 0.2, iterations, koleo_weight)[0], student)
    for leaf, grad in zip(s, s_grads):
        ref.assert_close(leaf.grad.numpy(), grad, rtol=1e-6, atol_scale=1e-6)
    for i, (leaf, grad) in enumerate(zip(f, f_grads)):
        if koleo_weight and i < 2:
            ref.assert_close(leaf.grad.numpy(), grad, rtol=1e-6, atol_scale=1e-6)
        else:
            assert leaf.grad is None  # local views' features never reach KoLeo


def test_sinkhorn_codes_spread_the_batch_over_the_prototypes():
    """One dominant prototype in the teacher's scores: softmax gives it nearly every image, Sinkhorn-Knopp's
    codes give each prototype about B / K of the mass: the collapse DINO's center fights, prevented."""
    teacher = draw(4, 2, 64, 8)
    for t in teacher:
        t[:, 0] += 5.0
    student = [torch.tensor(x) for x in draw(5, 2, 64, 8)]
    shares = {}
    for centering in ("center", "sinkhorn"):  # the center starts at 0: a plain softmax on the first step
        loss_fn = clrun.create("loss", "clrun/dino", in_dim=8, teacher_temperature=0.1, centering=centering).double()
        out = StepOutputs([s.clone() for s in student], student, [True, True], None, [torch.tensor(t) for t in teacher])
        shares[centering] = loss_fn(out)["top_prototype_share"].item()
    assert shares["center"] > 0.9 and shares["sinkhorn"] < 0.3
    codes = sinkhorn_teacher(np.concatenate(teacher), 0.1, 3)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-12)
    # After 3 rounds (DINOv2's) every prototype holds between half and twice its even share of 128 / 8 images.
    assert 0.5 * 16 < codes.sum(axis=0).min() and codes.sum(axis=0).max() < 2 * 16


def test_koleo_is_lower_for_spread_features():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(32, 8))
    bunched = np.ones((32, 8)) + 0.01 * rng.normal(size=(32, 8))
    assert koleo(spread) < koleo(bunched) - 3


@pytest.mark.parametrize("settings,message", [
    ({"centering": "ema"}, "clrun.create('loss', 'clrun/dino'): centering: expected one of 'center', 'sinkhorn', "
                           "got string 'ema'"),
    ({"koleo_weight": -0.1}, "clrun.create('loss', 'clrun/dino'): koleo_weight: must be a number >= 0 (DINOv2 uses 0.1; "
                             "0 for none), got -0.1"),
    ({"sinkhorn_iterations": 0}, "clrun.create('loss', 'clrun/dino'): sinkhorn_iterations: must be an integer >= 1 "
                                 "(DINOv2 uses 3), got 0"),
])
def test_bad_dinov2_settings_are_refused_naming_the_argument(settings, message):
    with pytest.raises(ComponentError) as info:
        clrun.create("loss", "clrun/dino", in_dim=8, **settings)
    assert str(info.value) == message


def test_ibot_with_koleo_is_dinov2s_objective_ibot_plus_the_koleo_term():
    """DINOv2 = iBOT + KoLeo: iBOT's loss with koleo_weight adds the weight times the reference KoLeo sum of the
    global views' class tokens to iBOT's loss without it."""
    from clrun.testing.losses import random_outputs

    out = random_outputs(6, seed=4)
    plain = clrun.create("loss", "clrun/ibot", in_dim=6).double()
    with_koleo = clrun.create("loss", "clrun/ibot", in_dim=6, koleo_weight=0.1).double()
    double = random_outputs(6, seed=4, dtype=torch.float64)
    expected = sum(koleo(double.features[i].numpy()) for i, g in enumerate(double.is_global) if g)
    result = with_koleo(double)
    ref.assert_close(result["koleo"].item(), expected)
    ref.assert_close(result["loss"].item(), plain(double)["loss"].item() + 0.1 * expected)
    assert "koleo" not in plain(out)


def test_koleo_on_a_batch_of_one_says_what_to_do():
    from clrun.plugins.losses.koleo import koleo as koleo_term

    with pytest.raises(ComponentError, match=r"^KoLeo needs at least 2 images per step to find each one's nearest "
                                             r"neighbour; this step has 1 \(data\.batch_size over every process and "
                                             r"micro-batch\): raise the batch size or set koleo_weight: 0$"):
        koleo_term(torch.randn(1, 4))
