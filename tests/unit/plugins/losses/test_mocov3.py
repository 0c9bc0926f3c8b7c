"""clrun/mocov3 against an independent float64 NumPy implementation of MoCo v3's Algorithm 1.

Reference: Chen, Xie and He (2021), "An Empirical Study of Training Self-Supervised Vision
Transformers", Algorithm 1 and the official moco/builder.py (``CrossEntropyLoss(logits, labels) * 2T``):
with unit queries q (the online predictions) and unit keys k (the momentum target's projections,
no gradient),

    ctr(q, k) = 2 tau mean_n -log( exp(q_n.k_n / tau) / sum_m exp(q_n.k_m / tau) ),   L = ctr(q1, k2) + ctr(q2, k1)

The reference loops over queries in NumPy; gradients are central finite differences.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import clrun
from clrun import ComponentError
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
numpy_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numpy_reference)


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(np.dot(v, v)))


def numpy_mocov3(queries: list[np.ndarray], keys: list[np.ndarray], tau: float) -> dict[str, float]:
    n = queries[0].shape[0]
    total, correct, pos, neg = 0.0, 0, [], []
    for a, b in ((0, 1), (1, 0)):
        terms = []
        for i in range(n):
            q = unit(queries[a][i])
            term, hit, p, others = numpy_reference.info_nce_row([float(np.dot(q, unit(keys[b][m]))) for m in range(n)], i, tau)
            terms.append(term)
            correct += hit
            pos.append(p)
            neg.append(others)
        total += 2 * tau * sum(terms) / n
    return {"loss": total, "contrastive_acc": correct / (2 * n), "pos_cosine": sum(pos) / len(pos),
            "neg_cosine": sum(neg) / len(neg)}


def make_inputs(rng, n, d):
    base = rng.standard_normal((n, d))
    queries = [base + 0.7 * rng.standard_normal((n, d)), 2.0 * base + rng.standard_normal((n, d))]
    keys = [rng.uniform(0.5, 3.0, (n, 1)) * (base + 0.9 * rng.standard_normal((n, d))) for _ in range(2)]
    return queries, keys


def run_module(loss, queries, keys, local=None):
    q = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in queries]
    k = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in keys]
    predictions, flags = list(q), [True, True]
    if local is not None:
        predictions.append(torch.tensor(local, dtype=torch.float64, requires_grad=True))
        flags.append(False)
    projections = [torch.zeros_like(p) for p in predictions]  # MoCo v3 compares the predictions
    res = loss(step_outputs(projections, flags, predictions=predictions, target_projections=k))
    res["loss"].backward()
    assert all(t.grad is None for t in k)  # keys are a stop-gradient
    if local is not None:
        assert predictions[2].grad is None
    return res, [t.grad.numpy() for t in q]


@pytest.mark.parametrize("n,d,tau", [(5, 4, 0.2), (2, 3, 1.0), (8, 6, 0.1), (6, 5, 0.5)])
def test_loss_metrics_and_gradients_match_numpy(n, d, tau):
    rng = np.random.default_rng(n * 10 + d)
    queries, keys = make_inputs(rng, n, d)
    res, grads = run_module(clrun.create("loss", "clrun/mocov3", temperature=tau), queries, keys)
    ref = numpy_mocov3(queries, keys, tau)
    assert res["loss"].dtype == torch.float64
    numpy_reference.assert_metrics_match(res, ref)
    expected = numpy_reference.central_difference(lambda qs: numpy_mocov3(qs, keys, tau)["loss"], queries)
    for got, want in zip(grads, expected):
        numpy_reference.assert_close(got, want, rtol=1e-6)


def test_local_views_are_ignored():
    rng = np.random.default_rng(2)
    queries, keys = make_inputs(rng, 4, 3)
    res, _ = run_module(clrun.create("loss", "clrun/mocov3"), queries, keys, local=rng.standard_normal((4, 3)))
    numpy_reference.assert_close(res["loss"].item(), numpy_mocov3(queries, keys, 0.2)["loss"])


def test_defaults_are_the_papers_vit_setting():
    assert clrun.create("loss", "clrun/mocov3").temperature == 0.2


def test_missing_predictor_and_target_errors():
    loss = clrun.create("loss", "clrun/mocov3")
    z = [torch.randn(3, 4) for _ in range(2)]
    with pytest.raises(ComponentError) as info:
        loss(step_outputs(z, target_projections=z))
    assert str(info.value) == ("clrun/mocov3 needs a predictor head on the online branch: add a `predictor:` "
                               "section to the recipe (e.g. name: clrun/mlp)")
    with pytest.raises(ComponentError) as info:
        loss(step_outputs(z, predictions=z))
    assert str(info.value) == ("clrun/mocov3 needs a momentum target network: add a `target:` section to the "
                               "recipe (e.g. momentum: 0.99)")
    with pytest.raises(ComponentError) as info:
        loss(step_outputs([torch.randn(1, 4)] * 2, predictions=[torch.randn(1, 4)] * 2,
                          target_projections=[torch.randn(1, 4)] * 2))
    assert str(info.value).startswith("clrun/mocov3 needs at least 2 images per batch to have negatives")
