"""clrun/byol against an independent float64 NumPy implementation of BYOL's loss.

Reference: Grill et al. (2020), "Bootstrap Your Own Latent", eq. (2) and section 3.1. For a
prediction ``p`` of one view and the target projection ``t`` of another,

    l(p, t) = mean_n || p_n / ||p_n|| - t_n / ||t_n|| ||^2

(written here as the squared distance of the normalized vectors, not as ``2 - 2 cos``), symmetrized
as the SUM ``L + L~`` over the pairs (global view j's target, every other view i's prediction).
Gradients w.r.t. the predictions are central finite differences of that reference; the targets are a
stop-gradient, so they must receive none. What every loss promises (detached metrics, float32
under autocast, ...) is checked for all of them by tests/unit/testing/test_loss_contracts.py.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clrun import ComponentError, UserError
from clrun.plugins.losses.byol import BYOLLoss
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

# ---------------------------------------------------------------- NumPy reference (float64, loops)


def numpy_byol(preds: list[np.ndarray], targets: list[np.ndarray], is_global: list[bool]) -> dict[str, float]:
    global_views = [i for i, g in enumerate(is_global) if g]
    total, cosines = 0.0, []
    for k, j in enumerate(global_views):
        for i in range(len(preds)):
            if i == j:
                continue
            distances, pair_cos = [], []
            for n in range(preds[i].shape[0]):
                p, t = preds[i][n], targets[k][n]
                pu = p / np.sqrt(np.sum(p * p))
                tu = t / np.sqrt(np.sum(t * t))
                distances.append(float(np.sum((pu - tu) ** 2)))
                pair_cos.append(float(np.dot(p, t) / np.sqrt(np.dot(p, p) * np.dot(t, t))))
            total += sum(distances) / len(distances)
            cosines.append(sum(pair_cos) / len(pair_cos))
    return {"loss": total, "pos_cosine": sum(cosines) / len(cosines)}


# ---------------------------------------------------------------- helpers


def outputs(is_global, predictions=None, target_projections=None, n=5, d=4):
    projections = [torch.randn(n, d, dtype=torch.float64) for _ in is_global]  # unused by BYOL
    return step_outputs(projections, is_global, predictions=predictions, target_projections=target_projections)


def make_inputs(is_global, n, d, seed):
    """Predictions per view and targets per global view, at very different scales and offsets."""
    rng = np.random.default_rng(seed)
    n_global = sum(is_global)
    preds = [rng.uniform(0.1, 4.0) * rng.standard_normal((n, d)) + rng.normal(0, 0.5) for _ in is_global]
    targets = [rng.uniform(0.1, 4.0) * rng.standard_normal((n, d)) + rng.normal(0, 0.5) for _ in range(n_global)]
    # target k partly aligned with the k-th global view's own prediction: cosines away from 0
    for k, j in enumerate(i for i, g in enumerate(is_global) if g):
        targets[k] = targets[k] + 2.0 * preds[j]
    return preds, targets


def torch_run(preds, targets, is_global):
    p = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in preds]
    t = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in targets]
    res = BYOLLoss()(outputs(is_global, p, t, n=preds[0].shape[0], d=preds[0].shape[1]))
    res["loss"].backward()
    return res, p, t


CASES = [
    # (is_global, N, D)
    ([True, True], 5, 4),
    ([True, True], 3, 7),
    ([True, True, False, False], 5, 4),  # multi-crop: locals predict both globals
    ([False, True, False, True], 4, 3),  # globals not first: target k is the k-th *global* view
    ([True, True, True, False], 2, 5),  # three global views
]

# ---------------------------------------------------------------- the reference itself


def test_reference_known_values():
    e = np.eye(3)
    # p1 -> t2 aligned (distance 0), p2 -> t1 orthogonal (distance 2), opposite is 4
    assert numpy_byol([e[:1], e[1:2]], [e[2:3], 3 * e[:1]], [True, True])["loss"] == pytest.approx(2.0)
    assert numpy_byol([e[:1], -e[:1]], [e[:1], e[:1]], [True, True])["loss"] == pytest.approx(4.0)


# ---------------------------------------------------------------- the module against the reference


@pytest.mark.parametrize("is_global,n,d", CASES)
def test_loss_and_gradient_match_numpy(is_global, n, d):
    preds, targets = make_inputs(is_global, n, d, seed=n * 100 + d + len(is_global))
    res, p, t = torch_run(preds, targets, is_global)
    expected = numpy_byol(preds, targets, is_global)

    assert set(res) == {"loss", "pos_cosine"}
    assert res["loss"].dtype == torch.float64 and res["loss"].ndim == 0
    ref.assert_close(res["loss"].item(), expected["loss"])
    ref.assert_close(res["pos_cosine"].item(), expected["pos_cosine"])

    grads = ref.central_difference(lambda xs: numpy_byol(xs, targets, is_global)["loss"], preds)
    for tensor, g in zip(p, grads):
        ref.assert_close(tensor.grad.numpy(), g, rtol=1e-6, atol_scale=1e-7)
    for tensor in t:  # stop-gradient: the targets get nothing even though they require grad
        assert tensor.grad is None


def test_is_a_sum_over_pairs():
    # the paper's L + L~: one pair at distance 0, the other at 2 -> 2 (a mean would give 1)
    e = torch.eye(3, dtype=torch.float64)
    res = BYOLLoss()(outputs([True, True], [e[:1], e[1:2]], [e[2:3], 3 * e[:1]], n=1, d=3))
    assert res["loss"].item() == pytest.approx(2.0, abs=1e-12)
    assert res["pos_cosine"].item() == pytest.approx(0.5, abs=1e-12)  # cosines 1 and 0


def test_perfect_predictions_give_zero():
    rng = np.random.default_rng(0)
    t1, t2 = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    # every view predicts the other view's target up to a positive scale
    p = [torch.tensor(2.5 * t2), torch.tensor(0.3 * t1)]
    res = BYOLLoss()(outputs([True, True], p, [torch.tensor(t1), torch.tensor(t2)], n=6, d=8))
    assert res["loss"].item() == pytest.approx(0.0, abs=1e-12)
    assert res["pos_cosine"].item() == pytest.approx(1.0, abs=1e-12)


def test_target_from_a_graph_gets_no_gradient():
    # a target computed from a parameter (as if the target network forgot no_grad) must not train it
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 4, dtype=torch.float64)
    p = [torch.randn(5, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    BYOLLoss()(outputs([True, True], p, [x @ w, (x + 1) @ w]))["loss"].backward()
    assert w.grad is None
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in p)


def test_batch_of_one_works():
    preds, targets = make_inputs([True, True], 1, 4, seed=3)
    res, _, _ = torch_run(preds, targets, [True, True])
    ref.assert_close(res["loss"].item(), numpy_byol(preds, targets, [True, True])["loss"])


# ---------------------------------------------------------------- precision


def test_bfloat16_inputs_give_a_float32_loss():
    preds, targets = make_inputs([True, True], 8, 16, seed=4)
    p = [torch.tensor(x, dtype=torch.bfloat16, requires_grad=True) for x in preds]
    t = [torch.tensor(x, dtype=torch.bfloat16) for x in targets]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = BYOLLoss()(outputs([True, True], p, t, n=8, d=16))
    assert res["loss"].dtype == torch.float32
    expected = numpy_byol([x.detach().double().numpy() for x in p], [x.double().numpy() for x in t], [True, True])
    assert res["loss"].item() == pytest.approx(expected["loss"], rel=1e-5)
    res["loss"].backward()
    assert p[0].grad.dtype == torch.bfloat16


# ---------------------------------------------------------------- errors


def test_missing_predictor_error():
    t = [torch.randn(4, 8) for _ in range(2)]
    with pytest.raises(UserError) as info:
        BYOLLoss()(outputs([True, True], None, t))
    assert str(info.value) == (
        "clrun/byol needs a predictor head on the online branch: add a `predictor:` section to the recipe "
        "(e.g. name: clrun/mlp)"
    )


def test_missing_target_error():
    p = [torch.randn(4, 8) for _ in range(2)]
    with pytest.raises(ComponentError) as info:
        BYOLLoss()(outputs([True, True], p, None))
    assert str(info.value) == (
        "clrun/byol needs a momentum target network: add a `target:` section to the recipe (e.g. momentum: 0.99)"
    )


def test_one_global_view_error():
    p = [torch.randn(4, 8) for _ in range(3)]
    with pytest.raises(ComponentError) as info:
        BYOLLoss()(outputs([True, False, False], p, [torch.randn(4, 8)]))
    assert str(info.value) == (
        "clrun/byol needs at least 2 global views (each view's prediction regresses the target projection "
        "of another global view); the recipe makes 1. Use a global view section with count 2 "
        "(a section without `local: true`)."
    )


def test_target_count_mismatch_error():
    p = [torch.randn(4, 8) for _ in range(3)]
    with pytest.raises(ComponentError, match=re.escape("clrun/byol got 3 target projections for 2 global views")):
        BYOLLoss()(outputs([True, True, False], p, [torch.randn(4, 8) for _ in range(3)]))


def test_prediction_width_mismatch_error():
    p = [torch.randn(4, 8) for _ in range(2)]
    t = [torch.randn(4, 16) for _ in range(2)]
    with pytest.raises(ComponentError) as info:
        BYOLLoss()(outputs([True, True], p, t))
    assert str(info.value) == (
        "clrun/byol needs target projections of the predictions' shape (4, 8); got (4, 16). "
        "The predictor's output width must equal the projector's (out_dim)."
    )


def test_takes_no_arguments():
    with pytest.raises(TypeError):
        BYOLLoss(temperature=0.1)


# ---------------------------------------------------------------- registration


def test_component_registered():
    from clrun.plugins.losses import components as loss_components

    (comp,) = [c for c in loss_components.clrun_components() if c.name == "clrun/byol"]
    assert comp.kind == "loss" and comp.factory is BYOLLoss and comp.summary
