"""clrun/ntxent against an independent float64 NumPy implementation of SimCLR's NT-Xent.

Reference: Chen et al. (2020), "A Simple Framework for Contrastive Learning of Visual
Representations", eq. (1). With 2N views z_1..z_2N, u_i = z_i / ||z_i||, s_ik = u_i.u_k / tau and
j(i) the other view of image i:

    l_i  = -log( exp(s_ij) / sum_{k != i} exp(s_ik) ),    L = (1/2N) sum_i l_i

Hand-derived gradient (used by ``numpy_ntxent_grad``): let p_ik = softmax_{k != i}(s_ik) and
G_ik = (p_ik - [k == j(i)]) / 2N for k != i, G_ii = 0, so dL/ds_ik = G_ik. Since s_ik = u_i.u_k / tau
involves u_m both as the anchor (i = m) and as the candidate (k = m),

    dL/du_m = (1/tau) sum_k (G_mk + G_km) u_k.

Through u = z / r with r = ||z||, du/dz = (I - u u^T) / r, hence

    dL/dz_m = (g_m - (u_m . g_m) u_m) / r_m,    g_m = dL/du_m.

Nothing here is shared with clrun.plugins.losses.ntxent: the reference loops over anchors in NumPy.
What every loss promises (detached metrics, float32 under autocast, ...) is checked for all of them
by tests/unit/testing/test_loss_contracts.py.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clrun import Component, UserError
from clrun.plugins.losses import components as loss_components
from clrun.plugins.losses.ntxent import NTXentLoss
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
numpy_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numpy_reference)

# ---------------------------------------------------------------- NumPy reference (float64, loops)


def numpy_ntxent(z1: np.ndarray, z2: np.ndarray, tau: float) -> dict[str, float]:
    """NT-Xent and its diagnostics, anchor by anchor, straight from the paper's formula."""
    n = z1.shape[0]
    m = 2 * n
    z = np.concatenate([z1, z2], axis=0).astype(np.float64)
    u = np.array([z[i] / math.sqrt(float(np.dot(z[i], z[i]))) for i in range(m)])
    losses, correct, entropies, pos, neg = [], 0, [], [], []
    for i in range(m):
        j = i + n if i < n else i - n
        s = {k: float(np.dot(u[i], u[k])) / tau for k in range(m) if k != i}
        top = max(s.values())
        log_denominator = top + math.log(sum(math.exp(v - top) for v in s.values()))
        losses.append(-(s[j] - log_denominator))
        best = max(s, key=lambda k: (s[k], -k))  # first index among the maxima, like argmax
        correct += best == j
        entropies.append(-sum(math.exp(v - log_denominator) * (v - log_denominator) for v in s.values()))
        for k, v in s.items():
            (pos if k == j else neg).append(v * tau)
    return {
        "loss": sum(losses) / m,
        "contrastive_acc": correct / m,
        "logit_entropy": sum(entropies) / m,
        "pos_cosine": sum(pos) / len(pos),
        "neg_cosine": sum(neg) / len(neg),
    }


def numpy_ntxent_grad(z1: np.ndarray, z2: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """The hand-derived dL/dz1, dL/dz2 (see the module docstring)."""
    n, d = z1.shape
    m = 2 * n
    z = np.concatenate([z1, z2], axis=0).astype(np.float64)
    r = np.array([math.sqrt(float(np.dot(z[i], z[i]))) for i in range(m)])
    u = z / r[:, None]
    G = np.zeros((m, m))
    for i in range(m):
        j = i + n if i < n else i - n
        s = np.array([np.dot(u[i], u[k]) / tau if k != i else -np.inf for k in range(m)])
        p = np.exp(s - s.max())
        p /= p.sum()
        for k in range(m):
            if k != i:
                G[i, k] = (p[k] - (1.0 if k == j else 0.0)) / m
    grad_z = np.zeros((m, d))
    for a in range(m):
        g = np.zeros(d)
        for k in range(m):
            g += (G[a, k] + G[k, a]) * u[k]
        g /= tau
        grad_z[a] = (g - np.dot(u[a], g) * u[a]) / r[a]
    return grad_z[:n], grad_z[n:]


# ---------------------------------------------------------------- helpers


def make_views(kind: str, n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "independent":  # unrelated views with very different scales and offsets
        return 0.2 * rng.standard_normal((n, d)), 3.0 * rng.standard_normal((n, d)) + 0.5
    if kind == "correlated":  # second view = rescaled, noisy first view (a partly solvable task)
        z1 = rng.standard_normal((n, d))
        return z1, rng.uniform(0.1, 5.0, size=(n, 1)) * (z1 + 1.5 * rng.standard_normal((n, d)))
    if kind == "aligned":  # every positive pair points the same way, different lengths
        z1 = rng.standard_normal((n, d))
        return z1, rng.uniform(0.1, 10.0, size=(n, 1)) * z1
    raise AssertionError(kind)


CASES = [
    # (kind, N, d, tau)
    ("independent", 2, 3, 0.5),
    ("independent", 5, 8, 0.07),
    ("correlated", 16, 32, 0.07),
    ("correlated", 7, 4, 0.2),
    ("correlated", 3, 64, 1.0),
    ("aligned", 6, 5, 0.5),
    ("aligned", 4, 16, 0.07),
]


def torch_run(z1: np.ndarray, z2: np.ndarray, tau: float, local: bool = False):
    t1 = torch.tensor(z1, dtype=torch.float64, requires_grad=True)
    t2 = torch.tensor(z2, dtype=torch.float64, requires_grad=True)
    projections, flags = [t1, t2], [True, True]
    if local:  # a local view between the two global ones is ignored
        loc = torch.randn(z1.shape[0], z1.shape[1], dtype=torch.float64, requires_grad=True)
        projections, flags = [t1, loc, t2], [True, False, True]
    res = NTXentLoss(temperature=tau)(step_outputs(projections, flags))
    res["loss"].backward()
    if local:
        assert projections[1].grad is None
    return res, t1.grad.numpy(), t2.grad.numpy()


# ---------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("kind,n,d,tau", [("independent", 2, 3, 0.5), ("correlated", 3, 4, 0.07), ("aligned", 3, 2, 0.2)])
def test_hand_derived_gradient_matches_finite_differences(kind, n, d, tau):
    z1, z2 = make_views(kind, n, d, seed=11)
    g1, g2 = numpy_ntxent_grad(z1, z2, tau)
    f1, f2 = numpy_reference.central_difference(lambda zs: numpy_ntxent(zs[0], zs[1], tau)["loss"], [z1, z2])
    scale = max(np.abs(f1).max(), np.abs(f2).max())
    np.testing.assert_allclose(g1, f1, rtol=1e-6, atol=1e-7 * scale)
    np.testing.assert_allclose(g2, f2, rtol=1e-6, atol=1e-7 * scale)


def test_reference_uniform_similarities():
    # orthonormal vectors: all logits 0, l_i = log(2N - 1), entropy = log(2N - 1)
    n = 3
    e = np.eye(2 * n)
    ref = numpy_ntxent(e[:n], e[n:], 0.5)
    assert ref["loss"] == pytest.approx(math.log(2 * n - 1), rel=1e-14)
    assert ref["logit_entropy"] == pytest.approx(math.log(2 * n - 1), rel=1e-14)


# ---------------------------------------------------------------- the module against the reference


@pytest.mark.parametrize("kind,n,d,tau", CASES)
def test_loss_and_gradient_match_numpy(kind, n, d, tau):
    z1, z2 = make_views(kind, n, d, seed=n * 1000 + d)
    res, g1, g2 = torch_run(z1, z2, tau)
    ref = numpy_ntxent(z1, z2, tau)
    r1, r2 = numpy_ntxent_grad(z1, z2, tau)

    assert set(res) == {"loss", "contrastive_acc", "logit_entropy", "pos_cosine", "neg_cosine"}
    assert res["loss"].dtype == torch.float64 and res["loss"].ndim == 0
    numpy_reference.assert_close(res["loss"].item(), ref["loss"])
    numpy_reference.assert_close(g1, r1)
    numpy_reference.assert_close(g2, r2)
    assert res["contrastive_acc"].item() == ref["contrastive_acc"]
    for key in ("logit_entropy", "pos_cosine", "neg_cosine"):
        numpy_reference.assert_close(res[key].item(), ref[key])


def test_local_views_are_ignored():
    z1, z2 = make_views("correlated", 6, 8, seed=3)
    res, g1, g2 = torch_run(z1, z2, 0.1, local=True)
    ref = numpy_ntxent(z1, z2, 0.1)
    r1, r2 = numpy_ntxent_grad(z1, z2, 0.1)
    numpy_reference.assert_close(res["loss"].item(), ref["loss"])
    numpy_reference.assert_close(g1, r1)
    numpy_reference.assert_close(g2, r2)


def test_partly_solvable_case_has_intermediate_accuracy():
    z1, z2 = make_views("correlated", 16, 32, seed=16 * 1000 + 32)
    ref = numpy_ntxent(z1, z2, 0.07)
    assert 0.0 < ref["contrastive_acc"] < 1.0  # so the equality checks above mean something
    res, _, _ = torch_run(z1, z2, 0.07)
    assert res["contrastive_acc"].item() == ref["contrastive_acc"]


def test_perfect_alignment_gives_accuracy_one():
    z1, z2 = make_views("aligned", 8, 16, seed=5)
    res, _, _ = torch_run(z1, z2, 0.5)
    assert res["contrastive_acc"].item() == 1.0
    assert res["pos_cosine"].item() == pytest.approx(1.0, abs=1e-12)
    assert numpy_ntxent(z1, z2, 0.5)["contrastive_acc"] == 1.0


def test_entropy_bounds():
    z1, z2 = make_views("independent", 10, 6, seed=1)
    res, _, _ = torch_run(z1, z2, 1.0)
    assert 0.0 <= res["logit_entropy"].item() <= math.log(2 * 10 - 1) + 1e-12


# ---------------------------------------------------------------- precision


def test_half_precision_inputs_are_computed_in_float32():
    z1, z2 = make_views("correlated", 8, 16, seed=2)
    t1 = torch.tensor(z1, dtype=torch.bfloat16)
    t2 = torch.tensor(z2, dtype=torch.bfloat16)
    loss = NTXentLoss(0.1)
    res = loss(step_outputs([t1, t2], [True, True]))
    assert res["loss"].dtype == torch.float32
    ref = numpy_ntxent(t1.double().numpy(), t2.double().numpy(), 0.1)  # same (rounded) inputs
    assert res["loss"].item() == pytest.approx(ref["loss"], rel=1e-5)


# ---------------------------------------------------------------- errors


def test_batch_size_one_error():
    z = torch.randn(1, 8)
    with pytest.raises(UserError) as info:  # the CLI prints a UserError's message, no traceback
        NTXentLoss()(step_outputs([z, z.clone()], [True, True]))
    assert str(info.value).startswith(
        "clrun/ntxent needs at least 2 images per batch to have negatives; got batch size 1"
    )


def test_three_global_views_error():
    views = [torch.randn(4, 8) for _ in range(3)]
    with pytest.raises(UserError) as info:
        NTXentLoss()(step_outputs(views, [True, True, True]))
    assert str(info.value).startswith(
        "clrun/ntxent compares exactly 2 global views; the recipe makes 3. Use views with count 2"
    )


def test_one_global_view_with_locals_error():
    views = [torch.randn(4, 8) for _ in range(3)]
    with pytest.raises(ValueError, match=re.escape("compares exactly 2 global views; the recipe makes 1.")):
        NTXentLoss()(step_outputs(views, [True, False, False]))


def test_mismatched_view_shapes_error():
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(step_outputs([torch.randn(4, 8), torch.randn(5, 8)], [True, True]))


@pytest.mark.parametrize("tau", [0, 0.0, -0.5, float("nan"), float("inf"), True, "0.5"])
def test_temperature_must_be_positive(tau):
    with pytest.raises(ValueError, match="temperature must be"):
        NTXentLoss(temperature=tau)


def test_default_temperature_is_simclr_default():
    assert NTXentLoss().temperature == 0.5
    assert NTXentLoss(1).temperature == 1.0


# ---------------------------------------------------------------- registration


def test_component_offered():
    offered = loss_components.clrun_components()
    assert isinstance(offered, list)
    (comp,) = [c for c in offered if c.name == "clrun/ntxent"]
    assert isinstance(comp, Component)
    assert comp.kind == "loss" and comp.factory is NTXentLoss and comp.summary
