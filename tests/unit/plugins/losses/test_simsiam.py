"""clrun/simsiam against an independent float64 NumPy implementation of SimSiam's loss.

Reference: Chen and He (2021), "Exploring Simple Siamese Representation Learning", eqs. (1)-(4):

    D(p, z) = -mean_n  p_n/||p_n||_2 . z_n/||z_n||_2,     L = D(p1, stopgrad(z2))/2 + D(p2, stopgrad(z1))/2

generalized to the MEAN over all pairs (global view j's projection as target, every other view i's
prediction). Gradients w.r.t. the predictions are central finite differences of the reference with
the projections held fixed: the projections are a stop-gradient and must receive no gradient through
the targets. The collapse indicator (section 4.1) is the per-channel std over the batch of the
l2-normalized projections, averaged over channels, times sqrt(D). What every loss promises (detached
metrics, float32 under autocast, ...) is checked for all of them by tests/unit/testing/test_loss_contracts.py.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clrun import ComponentError, UserError
from clrun.plugins.losses.simsiam import SimSiamLoss
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

# ---------------------------------------------------------------- NumPy reference (float64, loops)


def numpy_simsiam(preds: list[np.ndarray], projections: list[np.ndarray], is_global: list[bool]) -> dict[str, float]:
    global_views = [i for i, g in enumerate(is_global) if g]
    terms = []
    for j in global_views:
        for i in range(len(preds)):
            if i == j:
                continue
            cosines = []
            for n in range(preds[i].shape[0]):
                p, z = preds[i][n], projections[j][n]
                cosines.append(float(np.dot(p, z)) / (np.linalg.norm(p) * np.linalg.norm(z)))
            terms.append(-sum(cosines) / len(cosines))
    ratios = []
    for j in global_views:
        z = projections[j]
        u = np.array([row / math.sqrt(float(np.dot(row, row))) for row in z])
        n, d = u.shape
        if n < 2:
            ratios.append(math.nan)  # no spread over a single image
            continue
        stds = []
        for c in range(d):
            mean = sum(u[:, c]) / n
            stds.append(math.sqrt(sum((x - mean) ** 2 for x in u[:, c]) / (n - 1)))
        ratios.append(sum(stds) / d * math.sqrt(d))
    return {"loss": sum(terms) / len(terms), "output_std_ratio": sum(ratios) / len(ratios)}


# ---------------------------------------------------------------- helpers


def outputs(projections, is_global, predictions=None, target_projections=None):
    return step_outputs(projections, is_global, predictions=predictions, target_projections=target_projections)


def make_inputs(is_global, n, d, seed):
    """Projections and predictions per view, different scales and offsets, predictions partly aligned."""
    rng = np.random.default_rng(seed)
    projections = [rng.uniform(0.1, 4.0) * rng.standard_normal((n, d)) + rng.normal(0, 0.5) for _ in is_global]
    others = [rng.uniform(0.1, 4.0) * rng.standard_normal((n, d)) for _ in is_global]
    # view i's prediction leans towards the next view's projection: a non-trivial pairing
    preds = [others[i] + 1.5 * projections[(i + 1) % len(is_global)] for i in range(len(is_global))]
    return preds, projections


def torch_run(preds, projections, is_global):
    p = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in preds]
    z = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in projections]
    res = SimSiamLoss()(outputs(z, is_global, p))
    res["loss"].backward()
    return res, p, z


CASES = [
    # (is_global, N, D)
    ([True, True], 5, 4),
    ([True, True], 3, 6),
    ([True, True, False, False], 5, 4),  # multi-crop: locals predict both globals
    ([False, True, False, True], 4, 3),  # globals not first
    ([True, True, True], 4, 5),  # three global views
]

# ---------------------------------------------------------------- the reference itself


def test_reference_known_values():
    e = np.eye(2)
    # both predictions hit the other view's projection: -1; one hits, one is opposite: 0
    assert numpy_simsiam([e[1:], e[:1]], [e[:1], 2 * e[1:]], [True, True])["loss"] == pytest.approx(-1.0)
    assert numpy_simsiam([e[1:], -e[:1]], [e[:1], 2 * e[1:]], [True, True])["loss"] == pytest.approx(0.0)


# ---------------------------------------------------------------- the module against the reference


@pytest.mark.parametrize("is_global,n,d", CASES)
def test_loss_and_gradient_match_numpy(is_global, n, d):
    preds, projections = make_inputs(is_global, n, d, seed=n * 100 + d + len(is_global))
    res, p, z = torch_run(preds, projections, is_global)
    expected = numpy_simsiam(preds, projections, is_global)

    assert set(res) == {"loss", "output_std_ratio"}
    assert res["loss"].dtype == torch.float64 and res["loss"].ndim == 0
    ref.assert_close(res["loss"].item(), expected["loss"])
    ref.assert_close(res["output_std_ratio"].item(), expected["output_std_ratio"])

    grads = ref.central_difference(lambda xs: numpy_simsiam(xs, projections, is_global)["loss"], preds)
    for tensor, g in zip(p, grads):
        ref.assert_close(tensor.grad.numpy(), g, rtol=1e-6, atol_scale=1e-7)
    for tensor in z:  # stop-gradient: the targets get nothing even though they require grad
        assert tensor.grad is None


def test_projection_gets_gradient_only_through_its_prediction():
    # the real graph: p = z @ W. z's gradient must be exactly (dL/dp) W^T, nothing through the target
    rng = np.random.default_rng(7)
    projections = [rng.standard_normal((5, 4)) * s for s in (1.0, 3.0)]
    w = rng.standard_normal((4, 4))
    z = [torch.tensor(x, requires_grad=True) for x in projections]
    p = [zi @ torch.tensor(w) for zi in z]
    SimSiamLoss()(outputs(z, [True, True], p))["loss"].backward()

    preds = [x @ w for x in projections]
    grads = ref.central_difference(lambda xs: numpy_simsiam(xs, projections, [True, True])["loss"], preds)
    for tensor, g in zip(z, grads):
        ref.assert_close(tensor.grad.numpy(), g @ w.T, rtol=1e-6, atol_scale=1e-7)


def test_is_a_mean_over_pairs():
    # both predictions hit: the paper's 1/2 D + 1/2 D = -1 (a sum would give -2)
    e = torch.eye(2, dtype=torch.float64)
    res = SimSiamLoss()(outputs([e[:1], 2 * e[1:]], [True, True], [e[1:], e[:1]]))
    assert res["loss"].item() == pytest.approx(-1.0, abs=1e-12)


def test_no_target_network_needed_and_target_projections_ignored():
    preds, projections = make_inputs([True, True], 5, 4, seed=9)
    p = [torch.tensor(x) for x in preds]
    z = [torch.tensor(x) for x in projections]
    plain = SimSiamLoss()(outputs(z, [True, True], p))["loss"]
    other = SimSiamLoss()(outputs(z, [True, True], p, target_projections=[torch.randn(5, 4), torch.randn(5, 4)]))
    assert plain.item() == other["loss"].item()


def test_collapse_indicator():
    rng = np.random.default_rng(0)
    n, d = 512, 64
    healthy = [torch.tensor(rng.standard_normal((n, d))) for _ in range(2)]
    res = SimSiamLoss()(outputs(healthy, [True, True], [h.clone() for h in healthy]))
    assert res["output_std_ratio"].item() == pytest.approx(1.0, abs=0.05)

    row = torch.tensor(rng.standard_normal((1, d)))
    collapsed = [row.repeat(n, 1) * 3.0, row.repeat(n, 1)]  # every image mapped to the same direction
    res = SimSiamLoss()(outputs(collapsed, [True, True], [c.clone() for c in collapsed]))
    assert res["output_std_ratio"].item() == pytest.approx(0.0, abs=1e-6)
    assert res["loss"].item() == pytest.approx(-1.0, abs=1e-12)  # collapse solves the task


def test_batch_of_one_gives_a_loss_and_a_nan_indicator():
    preds, projections = make_inputs([True, True], 1, 4, seed=3)
    p = [torch.tensor(x, requires_grad=True) for x in preds]
    res = SimSiamLoss()(outputs([torch.tensor(x) for x in projections], [True, True], p))
    ref.assert_close(res["loss"].item(), numpy_simsiam(preds, projections, [True, True])["loss"])
    assert math.isnan(res["output_std_ratio"].item())


# ---------------------------------------------------------------- precision


def test_bfloat16_inputs_give_a_float32_loss():
    preds, projections = make_inputs([True, True], 8, 16, seed=4)
    p = [torch.tensor(x, dtype=torch.bfloat16, requires_grad=True) for x in preds]
    z = [torch.tensor(x, dtype=torch.bfloat16) for x in projections]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = SimSiamLoss()(outputs(z, [True, True], p))
    assert res["loss"].dtype == torch.float32
    expected = numpy_simsiam([x.detach().double().numpy() for x in p], [x.double().numpy() for x in z], [True, True])
    assert res["loss"].item() == pytest.approx(expected["loss"], rel=1e-5)


# ---------------------------------------------------------------- errors


def test_missing_predictor_error():
    z = [torch.randn(4, 8) for _ in range(2)]
    with pytest.raises(UserError) as info:
        SimSiamLoss()(outputs(z, [True, True], None))
    assert str(info.value) == (
        "clrun/simsiam needs a predictor head on the online branch: add a `predictor:` section to the recipe "
        "(e.g. name: clrun/mlp)"
    )


def test_one_global_view_error():
    z = [torch.randn(4, 8) for _ in range(3)]
    with pytest.raises(ComponentError) as info:
        SimSiamLoss()(outputs(z, [False, True, False], [torch.randn(4, 8) for _ in range(3)]))
    assert str(info.value) == (
        "clrun/simsiam needs at least 2 global views (each view's prediction is compared with the projection "
        "of another global view); the recipe makes 1. Use a global view section with count 2 "
        "(a section without `local: true`)."
    )


def test_prediction_count_mismatch_error():
    z = [torch.randn(4, 8) for _ in range(3)]
    with pytest.raises(ComponentError, match=re.escape("clrun/simsiam got 2 predictions for 3 views")):
        SimSiamLoss()(outputs(z, [True, True, False], [torch.randn(4, 8) for _ in range(2)]))


def test_prediction_width_mismatch_error():
    z = [torch.randn(4, 16) for _ in range(2)]
    with pytest.raises(ComponentError) as info:
        SimSiamLoss()(outputs(z, [True, True], [torch.randn(4, 8) for _ in range(2)]))
    assert str(info.value) == (
        "clrun/simsiam needs global projections of the predictions' shape (4, 8); got (4, 16). "
        "The predictor's output width must equal the projector's (out_dim)."
    )


def test_takes_only_the_ablation_switches():
    with pytest.raises(TypeError):
        SimSiamLoss(temperature=0.1)


def test_without_stop_gradient_the_targets_get_the_formulas_gradient():
    # the paper's collapsing ablation: d loss / d z is no longer zero but the formula's own derivative
    preds, projections = make_inputs([True, True], 5, 4, seed=11)
    p = [torch.tensor(x, requires_grad=True) for x in preds]
    z = [torch.tensor(x, requires_grad=True) for x in projections]
    SimSiamLoss(stop_gradient=False)(outputs(z, [True, True], p))["loss"].backward()
    grads = ref.central_difference(lambda xs: numpy_simsiam(preds, xs, [True, True])["loss"], projections)
    for tensor, g in zip(z, grads):
        ref.assert_close(tensor.grad.numpy(), g, rtol=1e-6, atol_scale=1e-7)


def test_without_a_required_predictor_the_projections_predict_each_other():
    _, projections = make_inputs([True, True], 5, 4, seed=12)
    z = [torch.tensor(x) for x in projections]
    res = SimSiamLoss(require_predictor=False)(outputs(z, [True, True]))
    ref.assert_close(res["loss"].item(), numpy_simsiam(projections, projections, [True, True])["loss"])


# ---------------------------------------------------------------- registration


def test_component_registered():
    from clrun.plugins.losses import components as loss_components

    (comp,) = [c for c in loss_components.clrun_components() if c.name == "clrun/simsiam"]
    assert comp.kind == "loss" and comp.factory is SimSiamLoss and comp.summary
