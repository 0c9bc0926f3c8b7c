"""clrun/dcl and clrun/dclw against an independent float64 NumPy implementation of the DCL paper's formula.

Reference: Yeh et al. (2022), "Decoupled Contrastive Learning", eq. (6) (DCL) and eq. (8) (DCLW's
von Mises-Fisher weight). For anchor u_i of view a and its positive u_i' of the other view:

    l_i = -w_i (u_i . u_i') / tau + log sum_{k not in {i, i'}} exp(u_i . u_k / tau),   loss = mean over 2N anchors
    w_i = 1 (DCL),   w_i = 2 - N exp(u1_i . u2_i / sigma) / sum_m exp(u1_m . u2_m / sigma) (DCLW)

The reference loops over anchors in NumPy; gradients are central finite differences. What every loss
promises (detached metrics, float32 under autocast, ...) is checked by tests/unit/testing/test_loss_contracts.py.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import clrun
from clrun import ComponentError, loss_kit
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
numpy_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numpy_reference)


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(np.dot(v, v)))


def numpy_dcl(views: list[np.ndarray], tau: float, sigma: float | None) -> dict[str, float]:
    n = views[0].shape[0]
    u = [[unit(views[a][i]) for i in range(n)] for a in range(2)]
    if sigma is None:
        w = [1.0] * n
    else:
        e = [math.exp(float(np.dot(u[0][i], u[1][i])) / sigma) for i in range(n)]
        w = [2 - n * e[i] / sum(e) for i in range(n)]
    losses, correct, pos, neg = [], 0, [], []
    for a in range(2):
        for i in range(n):
            anchor, positive = u[a][i], u[1 - a][i]
            others = [u[b][k] for b in range(2) for k in range(n) if k != i]
            sims = [float(np.dot(anchor, o)) for o in others]
            p = float(np.dot(anchor, positive))
            top = max(sims)
            lse = top / tau + math.log(sum(math.exp((s - top) / tau) for s in sims))
            losses.append(-w[i] * p / tau + lse)
            correct += int(p > top)
            pos.append(p)
            neg.extend(sims)
    return {"loss": sum(losses) / len(losses), "contrastive_acc": correct / len(losses),
            "pos_cosine": sum(pos) / len(pos), "neg_cosine": sum(neg) / len(neg)}


def run_module(loss, views, local=None):
    z = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in views]
    projections, flags = list(z), [True, True]
    if local is not None:
        projections.append(torch.tensor(local, dtype=torch.float64, requires_grad=True))
        flags.append(False)
    res = loss(step_outputs(projections, flags))
    res["loss"].backward()
    if local is not None:
        assert projections[2].grad is None
    return res, [t.grad.numpy() for t in z]


def make_views(rng, n, d):
    first = rng.standard_normal((n, d))
    return [first * 1.5 + 0.2, rng.uniform(0.5, 2.0, (n, 1)) * (first + 0.8 * rng.standard_normal((n, d)))]


CASES = [("clrun/dcl", {"temperature": 0.1}, None), ("clrun/dcl", {"temperature": 0.5}, None),
         ("clrun/dcl", {"temperature": 0.2, "weight_sigma": 0.3}, 0.3), ("clrun/dclw", {}, 0.5),
         ("clrun/dclw", {"temperature": 0.3, "weight_sigma": 1.5}, 1.5)]


@pytest.mark.parametrize("name,args,sigma", CASES)
@pytest.mark.parametrize("n,d", [(5, 4), (2, 3), (8, 6)])
def test_loss_metrics_and_gradients_match_numpy(name, args, sigma, n, d):
    rng = np.random.default_rng(n * 10 + d)
    views = make_views(rng, n, d)
    tau = args.get("temperature", 0.1)
    res, grads = run_module(clrun.create("loss", name, **args), views)
    ref = numpy_dcl(views, tau, sigma)
    assert res["loss"].dtype == torch.float64
    numpy_reference.assert_metrics_match(res, ref)
    expected = numpy_reference.central_difference(lambda v: numpy_dcl(v, tau, sigma)["loss"], views)
    for got, want in zip(grads, expected):
        numpy_reference.assert_close(got, want, rtol=1e-6)


def test_dcl_differs_from_ntxent_by_the_positive_in_the_denominator():
    rng = np.random.default_rng(3)
    views = make_views(rng, 6, 5)
    dcl, _ = run_module(clrun.create("loss", "clrun/dcl", temperature=0.2), views)
    ntxent, _ = run_module(clrun.create("loss", "clrun/ntxent", temperature=0.2), views)
    # NT-Xent's l_i = -s_pos + log(exp(s_pos) + sum_neg) = DCL's l_i + log(1 + exp(s_pos - lse_neg)) > DCL's l_i
    assert ntxent["loss"].item() > dcl["loss"].item()


def test_dclw_weights_average_one_so_equal_agreement_gives_dcl():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((4, 3))
    views = [base, 2.0 * base]  # every pair agrees perfectly: all weights are exactly 1
    dcl, _ = run_module(clrun.create("loss", "clrun/dcl"), views)
    dclw, _ = run_module(clrun.create("loss", "clrun/dclw"), views)
    numpy_reference.assert_close(dclw["loss"].item(), dcl["loss"].item())


def test_local_views_are_ignored():
    rng = np.random.default_rng(5)
    views = make_views(rng, 4, 3)
    res, grads = run_module(clrun.create("loss", "clrun/dclw"), views, local=rng.standard_normal((4, 3)))
    numpy_reference.assert_close(res["loss"].item(), numpy_dcl(views, 0.1, 0.5)["loss"])


def test_defaults_are_the_papers():
    assert clrun.create("loss", "clrun/dcl").temperature == 0.1
    assert clrun.create("loss", "clrun/dcl").weight_sigma is None
    dclw = clrun.create("loss", "clrun/dclw")
    assert dclw.temperature == 0.1 and dclw.weight_sigma == 0.5


def test_errors():
    with pytest.raises(ComponentError) as info:
        clrun.create("loss", "clrun/dclw", weight_sigma=None)
    assert str(info.value) == "clrun.create('loss', 'clrun/dclw'): weight_sigma: expected a number, got null"
    with pytest.raises(ComponentError) as info:
        clrun.create("loss", "clrun/dcl", weight_sigma=-1)
    assert str(info.value) == (
        "clrun.create('loss', 'clrun/dcl'): weight_sigma: must be a number >= 0.001 (DCLW's paper uses 0.5; null for DCL), "
        f"got -1.0: {loss_kit.SATURATES}")
    with pytest.raises(ComponentError) as info:
        clrun.create("loss", "clrun/dcl")(step_outputs([torch.randn(3, 4)] * 3))
    assert str(info.value) == (
        "clrun/dcl compares exactly 2 global views; the recipe makes 3. Use views with count 2 (2 global crops "
        "of every image), or a loss that handles another number of views.")
