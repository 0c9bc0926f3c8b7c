"""clrun/vicreg against an independent float64 NumPy implementation of the VICReg loss.

Reference: Bardes, Ponce and LeCun (2022), "VICReg", eqs. (1)-(6), with the official code's
reductions (facebookresearch/vicreg): for two views A, B of N images with D dimensions,

    invariance = (1/(N D)) sum_{n,i} (A_ni - B_ni)^2
    v(z)       = (1/D) sum_i max(0, 1 - sqrt(Var(z_i) + 1e-4))        (unbiased Var over the batch)
    c(z)       = (1/D) sum_{i != j} Cov(z)_ij^2,   Cov(z)_ij = sum_n (z_ni - m_i)(z_nj - m_j) / (N - 1)
    loss       = sim * invariance + std * (v(A) + v(B)) / 2 + cov * (c(A) + c(B))

averaged over the unordered pairs of global views. Gradients are central finite differences of the
reference, written with explicit loops. What every loss promises (detached metrics,
float32 under autocast, ...) is checked for all of them by tests/unit/testing/test_loss_contracts.py.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clrun import ComponentError, UserError
from clrun.plugins.losses.vicreg import VICRegLoss
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

# ---------------------------------------------------------------- NumPy reference (float64, loops)


def variance_term(z: np.ndarray) -> float:
    n, d = z.shape
    total = 0.0
    for i in range(d):
        mean = sum(z[:, i]) / n
        var = sum((x - mean) ** 2 for x in z[:, i]) / (n - 1)
        total += max(0.0, 1.0 - math.sqrt(var + 1e-4))
    return total / d


def covariance_term(z: np.ndarray) -> float:
    n, d = z.shape
    means = [sum(z[:, i]) / n for i in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                c = sum((z[k, i] - means[i]) * (z[k, j] - means[j]) for k in range(n)) / (n - 1)
                total += c * c
    return total / d


def numpy_vicreg(views, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0) -> dict[str, float]:
    losses, invs, vars_, covs = [], [], [], []
    for a, b in itertools.combinations(views, 2):
        n, d = a.shape
        inv = sum((a[k, i] - b[k, i]) ** 2 for k in range(n) for i in range(d)) / (n * d)
        var = variance_term(a) / 2 + variance_term(b) / 2
        cov = covariance_term(a) + covariance_term(b)
        losses.append(sim_coeff * inv + std_coeff * var + cov_coeff * cov)
        invs.append(inv)
        vars_.append(var)
        covs.append(cov)
    k = len(losses)
    return {
        "loss": sum(losses) / k,
        "invariance": sum(invs) / k,
        "variance": sum(vars_) / k,
        "covariance": sum(covs) / k,
    }


# ---------------------------------------------------------------- helpers


def make_views(n_views, n, d, seed):
    """Correlated views with per-dimension scales from 0.2 to 3 (some stds under 1, some over)."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, d))
    views = []
    for _ in range(n_views):
        scales = rng.uniform(0.2, 3.0, size=d)
        views.append(scales * (signal + 0.7 * rng.standard_normal((n, d))) + rng.normal(0, 1.0, size=d))
    return views


def torch_run(views, is_global, **kwargs):
    tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in views]
    res = VICRegLoss(**kwargs)(step_outputs(tensors, is_global))
    res["loss"].backward()
    return res, tensors


CASES = [
    # (n_views, N, D, kwargs)
    (2, 5, 4, {}),
    (2, 2, 3, {}),  # the smallest batch
    (2, 8, 5, {"sim_coeff": 1.0, "std_coeff": 3.0, "cov_coeff": 0.5}),
    (2, 6, 4, {"sim_coeff": 0.0}),
    (3, 4, 3, {}),  # three global views: mean over the 3 pairs
]

# ---------------------------------------------------------------- the reference itself


def test_reference_collapsed_views():
    z = np.tile(np.array([[0.5, -2.0, 1.0]]), (6, 1))  # every image mapped to the same point
    res = numpy_vicreg([z, z.copy()])
    assert res["invariance"] == 0.0 and res["covariance"] == 0.0
    assert res["variance"] == pytest.approx(1.0 - math.sqrt(1e-4))
    assert res["loss"] == pytest.approx(25 * 0.99)


# ---------------------------------------------------------------- the module against the reference


@pytest.mark.parametrize("n_views,n,d,kwargs", CASES)
def test_loss_and_gradient_match_numpy(n_views, n, d, kwargs):
    views = make_views(n_views, n, d, seed=n * 100 + d + n_views)
    res, tensors = torch_run(views, [True] * n_views, **kwargs)
    expected = numpy_vicreg(views, **kwargs)

    assert set(res) == {"loss", "invariance", "variance", "covariance"}
    assert res["loss"].dtype == torch.float64 and res["loss"].ndim == 0
    for key in ("loss", "invariance", "variance", "covariance"):
        ref.assert_close(res[key].item(), expected[key])
    assert min(expected["invariance"], expected["variance"], expected["covariance"]) > 1e-3  # all terms present

    grads = ref.central_difference(lambda xs: numpy_vicreg(xs, **kwargs)["loss"], views)
    for tensor, g in zip(tensors, grads):
        ref.assert_close(tensor.grad.numpy(), g, rtol=1e-6, atol_scale=1e-7)


def test_local_views_are_ignored():
    views = make_views(2, 6, 4, seed=3)
    local = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t1, t2 = (torch.tensor(x, requires_grad=True) for x in views)
    res = VICRegLoss()(step_outputs([t1, local, t2, local * 2], [True, False, True, False]))
    res["loss"].backward()
    ref.assert_close(res["loss"].item(), numpy_vicreg(views)["loss"])
    assert local.grad is None


def test_collapsed_views_give_the_variance_penalty():
    z = torch.tensor([[0.5, -2.0, 1.0]], dtype=torch.float64).repeat(6, 1)
    res = VICRegLoss()(step_outputs([z, z.clone()], [True, True]))
    assert res["loss"].item() == pytest.approx(25 * (1 - math.sqrt(1e-4)), rel=1e-12)
    assert res["invariance"].item() == 0.0 and res["covariance"].item() == 0.0


def test_defaults_are_the_papers():
    loss = VICRegLoss()
    assert (loss.sim_coeff, loss.std_coeff, loss.cov_coeff) == (25.0, 25.0, 1.0)


# ---------------------------------------------------------------- precision


def test_bfloat16_inputs_give_a_float32_loss():
    views = [torch.tensor(x, dtype=torch.bfloat16, requires_grad=True) for x in make_views(2, 8, 4, seed=4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = VICRegLoss()(step_outputs(views, [True, True]))
    assert res["loss"].dtype == torch.float32
    expected = numpy_vicreg([v.detach().double().numpy() for v in views])
    assert res["loss"].item() == pytest.approx(expected["loss"], rel=1e-5)


# ---------------------------------------------------------------- errors


def test_batch_size_one_error():
    z = torch.randn(1, 8)
    with pytest.raises(UserError) as info:
        VICRegLoss()(step_outputs([z, z.clone()], [True, True]))
    assert str(info.value) == (
        "clrun/vicreg needs at least 2 images per batch to estimate variances and covariances; got batch size 1. "
        "Raise the batch size, or drop the last incomplete batch if it is the one with a single image."
    )


def test_one_global_view_error():
    views = [torch.randn(4, 8) for _ in range(3)]
    with pytest.raises(ComponentError) as info:
        VICRegLoss()(step_outputs(views, [False, False, True]))
    assert str(info.value) == (
        "clrun/vicreg compares at least 2 global views; the recipe makes 1. "
        "Use a global view section with count 2 (a section without `local: true`)."
    )


def test_mismatched_view_shapes_error():
    with pytest.raises(ComponentError, match=re.escape("same shape; got (4, 8), (4, 6)")):
        VICRegLoss()(step_outputs([torch.randn(4, 8), torch.randn(4, 6)], [True, True]))


@pytest.mark.parametrize("name,default", [("sim_coeff", "25"), ("std_coeff", "25"), ("cov_coeff", "1")])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True, "25", None])
def test_bad_coefficient(name, default, value):
    with pytest.raises(ComponentError) as info:
        VICRegLoss(**{name: value})
    assert str(info.value) == (
        f"clrun/vicreg: {name} must be a number >= 0 (the paper uses {default}), got {value!r}"
    )


def test_all_coefficients_zero_error():
    with pytest.raises(ComponentError) as info:
        VICRegLoss(sim_coeff=0, std_coeff=0.0, cov_coeff=0)
    assert str(info.value) == (
        "clrun/vicreg: sim_coeff, std_coeff and cov_coeff are all 0, so the loss is constant; "
        "set at least one > 0 (the paper uses 25, 25 and 1)"
    )


# ---------------------------------------------------------------- registration


def test_component_registered():
    from clrun.plugins.losses import components as loss_components

    (comp,) = [c for c in loss_components.clrun_components() if c.name == "clrun/vicreg"]
    assert comp.kind == "loss" and comp.factory is VICRegLoss and comp.summary
