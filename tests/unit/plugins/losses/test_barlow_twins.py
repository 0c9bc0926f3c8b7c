"""clrun/barlow_twins against an independent float64 NumPy implementation of the Barlow Twins loss.

Reference: Zbontar et al. (2021), "Barlow Twins", eqs. (1)-(2) and the official code: every
dimension of each view standardized over the batch (biased variance, eps 1e-5 as in
BatchNorm1d(affine=False)), C_ij = sum_n zA_ni zB_nj / N, and

    loss = scale_loss * ( sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 ),

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
from clrun.plugins.losses.barlow_twins import BarlowTwinsLoss
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

# ---------------------------------------------------------------- NumPy reference (float64, loops)


def standardize(z: np.ndarray) -> np.ndarray:
    n, d = z.shape
    out = np.empty((n, d))
    for i in range(d):
        mean = sum(z[:, i]) / n
        var = sum((x - mean) ** 2 for x in z[:, i]) / n  # biased, like BatchNorm in training mode
        out[:, i] = (z[:, i] - mean) / math.sqrt(var + 1e-5)
    return out


def numpy_barlow_twins(views: list[np.ndarray], lambd: float = 0.0051, scale_loss: float = 1.0) -> dict[str, float]:
    losses, ons, offs = [], [], []
    for za, zb in itertools.combinations(views, 2):
        a, b = standardize(za), standardize(zb)
        n, d = a.shape
        on = off = 0.0
        for i in range(d):
            for j in range(d):
                c = sum(a[k, i] * b[k, j] for k in range(n)) / n
                if i == j:
                    on += (1.0 - c) ** 2
                else:
                    off += c**2
        losses.append(scale_loss * (on + lambd * off))
        ons.append(on)
        offs.append(off)
    k = len(losses)
    return {"loss": sum(losses) / k, "on_diagonal": sum(ons) / k, "off_diagonal": sum(offs) / k}


# ---------------------------------------------------------------- helpers


def make_views(n_views, n, d, seed, scales=None):
    """Correlated views (a shared signal plus noise) at different scales and offsets."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, d))
    scales = scales or [rng.uniform(0.2, 5.0) for _ in range(n_views)]
    return [s * (signal + rng.standard_normal((n, d))) + rng.normal(0, 2.0, size=d) for s in scales]


def torch_run(views, is_global, **kwargs):
    tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in views]
    res = BarlowTwinsLoss(**kwargs)(step_outputs(tensors, is_global))
    res["loss"].backward()
    return res, tensors


CASES = [
    # (n_views, N, D, scales, kwargs)
    (2, 5, 4, None, {}),
    (2, 5, 4, [1.0, 0.004], {}),  # one view so small that the eps in the variance matters
    (2, 2, 3, None, {"lambd": 0.5}),  # the smallest batch
    (2, 7, 5, [3.0, 0.5], {"lambd": 0.2, "scale_loss": 0.1}),
    (3, 4, 3, None, {"lambd": 0.3}),  # three global views: mean over the 3 pairs
]

# ---------------------------------------------------------------- the reference itself


def test_reference_identical_decorrelated_views_give_almost_zero():
    h = np.array([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], dtype=np.float64)  # zero-mean, orthogonal
    res = numpy_barlow_twins([h, 3 * h])
    assert res["off_diagonal"] == pytest.approx(0.0, abs=1e-24)
    # C_ii = (1 / sqrt(1 + eps)) (3 / sqrt(9 + eps)): just under 1 because of the eps
    c = 1 / math.sqrt((1 + 1e-5) * (1 + 1e-5 / 9))
    assert res["on_diagonal"] == pytest.approx(3 * (1 - c) ** 2, rel=1e-6)


# ---------------------------------------------------------------- the module against the reference


@pytest.mark.parametrize("n_views,n,d,scales,kwargs", CASES)
def test_loss_and_gradient_match_numpy(n_views, n, d, scales, kwargs):
    views = make_views(n_views, n, d, seed=n * 100 + d + n_views, scales=scales)
    res, tensors = torch_run(views, [True] * n_views, **kwargs)
    expected = numpy_barlow_twins(views, **kwargs)

    assert set(res) == {"loss", "on_diagonal", "off_diagonal"}
    assert res["loss"].dtype == torch.float64 and res["loss"].ndim == 0
    for key in ("loss", "on_diagonal", "off_diagonal"):
        ref.assert_close(res[key].item(), expected[key])
    assert expected["off_diagonal"] > 1e-3 and expected["on_diagonal"] > 1e-3  # both terms present

    grads = ref.central_difference(lambda xs: numpy_barlow_twins(xs, **kwargs)["loss"], views)
    for tensor, g in zip(tensors, grads):
        ref.assert_close(tensor.grad.numpy(), g, rtol=1e-6, atol_scale=1e-6)


def test_local_views_are_ignored():
    views = make_views(2, 6, 4, seed=3)
    local = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t1, t2 = (torch.tensor(x, requires_grad=True) for x in views)
    res = BarlowTwinsLoss()(step_outputs([local, t1, local * 2, t2], [False, True, False, True]))
    res["loss"].backward()
    ref.assert_close(res["loss"].item(), numpy_barlow_twins(views)["loss"])
    assert local.grad is None


def test_scale_loss_scales_the_loss_only():
    views = [torch.tensor(x) for x in make_views(2, 6, 4, seed=5)]
    plain = BarlowTwinsLoss(lambd=0.1)(step_outputs(views, [True, True]))
    scaled = BarlowTwinsLoss(lambd=0.1, scale_loss=0.1)(step_outputs(views, [True, True]))
    assert scaled["loss"].item() == pytest.approx(0.1 * plain["loss"].item(), rel=1e-12)
    assert scaled["on_diagonal"].item() == plain["on_diagonal"].item()
    assert scaled["off_diagonal"].item() == plain["off_diagonal"].item()


def test_defaults_are_the_official_ones():
    loss = BarlowTwinsLoss()
    assert loss.lambd == 0.0051 and loss.scale_loss == 1.0
    assert BarlowTwinsLoss(lambd=0, scale_loss=2).lambd == 0.0


# ---------------------------------------------------------------- precision


def test_bfloat16_inputs_give_a_float32_loss():
    views = [torch.tensor(x, dtype=torch.bfloat16, requires_grad=True) for x in make_views(2, 8, 4, seed=4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = BarlowTwinsLoss(lambd=0.1)(step_outputs(views, [True, True]))
    assert res["loss"].dtype == torch.float32
    expected = numpy_barlow_twins([v.detach().double().numpy() for v in views], lambd=0.1)
    assert res["loss"].item() == pytest.approx(expected["loss"], rel=1e-5)


# ---------------------------------------------------------------- errors


def test_batch_size_one_error():
    z = torch.randn(1, 8)
    with pytest.raises(UserError) as info:
        BarlowTwinsLoss()(step_outputs([z, z.clone()], [True, True]))
    assert str(info.value) == (
        "clrun/barlow_twins needs at least 2 images per batch to standardize each dimension over the batch; "
        "got batch size 1. Raise the batch size, or drop the last incomplete batch if it is the one with a "
        "single image."
    )


def test_one_global_view_error():
    views = [torch.randn(4, 8) for _ in range(3)]
    with pytest.raises(ComponentError) as info:
        BarlowTwinsLoss()(step_outputs(views, [True, False, False]))
    assert str(info.value) == (
        "clrun/barlow_twins compares at least 2 global views; the recipe makes 1. "
        "Use a global view section with count 2 (a section without `local: true`)."
    )


def test_mismatched_view_shapes_error():
    with pytest.raises(ComponentError, match=re.escape("same shape; got (4, 8), (5, 8)")):
        BarlowTwinsLoss()(step_outputs([torch.randn(4, 8), torch.randn(5, 8)], [True, True]))


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), True, "0.0051", None])
def test_bad_lambd(value):
    with pytest.raises(ComponentError) as info:
        BarlowTwinsLoss(lambd=value)
    assert str(info.value) == (
        f"clrun/barlow_twins: lambd must be a number >= 0 (the official code uses 0.0051), got {value!r}"
    )


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan"), False, "1"])
def test_bad_scale_loss(value):
    with pytest.raises(ComponentError) as info:
        BarlowTwinsLoss(scale_loss=value)
    assert str(info.value) == (
        "clrun/barlow_twins: scale_loss must be a number > 0 (1.0 in the paper; solo-learn uses 0.1 on "
        f"CIFAR), got {value!r}"
    )


# ---------------------------------------------------------------- registration


def test_component_registered():
    from clrun.plugins.losses import components as loss_components

    (comp,) = [c for c in loss_components.clrun_components() if c.name == "clrun/barlow_twins"]
    assert comp.kind == "loss" and comp.factory is BarlowTwinsLoss and comp.summary
