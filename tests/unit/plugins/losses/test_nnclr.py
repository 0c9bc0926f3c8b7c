"""clrun/nnclr against an independent float64 NumPy implementation of NNCLR's eq. (2), symmetrized.

Reference: Dwibedi et al. (2021), "With a Little Help from My Friends: Nearest-Neighbor Contrastive
Learning of Visual Representations". With the support queue Q (unit rows), NN(z) the row of Q most
similar (cosine) to z, and unit predictions p (the projections when there is no predictor):

    l(a, b)_n = -log( exp(NN(z^a_n).p^b_n / tau) / sum_m exp(NN(z^a_n).p^b_m / tau) ),  L = (mean l(1,2) + mean l(2,1)) / 2

The lookup is a brute-force loop over the queue; the queue update (the first view's unit projections,
first in first out) is checked against a list model. Gradients are central finite differences.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import clrun
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
numpy_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numpy_reference)


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(np.dot(v, v)))


def nearest(z: np.ndarray, queue: np.ndarray) -> tuple[np.ndarray, float]:
    best, best_cos = None, -math.inf
    for row in queue:
        c = float(np.dot(unit(z), row))
        if c > best_cos:
            best, best_cos = row, c
    return best, best_cos


def numpy_nnclr(projections, predictions, queue, tau) -> dict[str, float]:
    n = projections[0].shape[0]
    terms, correct, pos, neg, nn_cos = [], 0, [], [], []
    for a, b in ((0, 1), (1, 0)):
        for i in range(n):
            neighbour, c = nearest(projections[a][i], queue)
            nn_cos.append(c)
            sims = [float(np.dot(neighbour, unit(predictions[b][m]))) for m in range(n)]
            term, hit, p, others = numpy_reference.info_nce_row(sims, i, tau)
            terms.append(term)
            correct += hit
            pos.append(p)
            neg.append(others)
    return {"loss": sum(terms) / len(terms), "contrastive_acc": correct / len(terms), "pos_cosine": np.mean(pos),
            "neg_cosine": np.mean(neg), "nn_cosine": np.mean(nn_cos)}


def module(d, size, tau, queue):
    loss = clrun.create("loss", "clrun/nnclr", in_dim=d, queue_size=size, temperature=tau).double()
    with torch.no_grad():
        loss.queue.copy_(torch.tensor(queue))
    return loss


def run_module(loss, projections, predictions=None):
    z = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in projections]
    p = None if predictions is None else [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in predictions]
    res = loss(step_outputs(z, predictions=p))
    res["loss"].backward()
    if p is None:
        return res, [t.grad.numpy() for t in z]
    assert all(t.grad is None for t in z)  # the lookup has no gradient; the predictions carry it
    return res, [t.grad.numpy() for t in p]


def random_queue(rng, size, d):
    return np.array([unit(rng.standard_normal(d)) for _ in range(size)])


@pytest.mark.parametrize("n,d,size,tau", [(4, 3, 6, 0.1), (2, 5, 3, 0.5), (6, 4, 10, 0.2)])
def test_loss_metrics_and_gradients_match_numpy_with_a_predictor(n, d, size, tau):
    rng = np.random.default_rng(n * 100 + d * 10 + size)
    projections = [rng.standard_normal((n, d)) for _ in range(2)]
    predictions = [z + 0.5 * rng.standard_normal((n, d)) for z in projections]
    queue = random_queue(rng, size, d)
    res, grads = run_module(module(d, size, tau, queue), projections, predictions)
    ref = numpy_nnclr(projections, predictions, queue, tau)
    assert res["loss"].dtype == torch.float64
    numpy_reference.assert_metrics_match(res, ref)
    expected = numpy_reference.central_difference(lambda ps: numpy_nnclr(projections, ps, queue, tau)["loss"], predictions)
    for got, want in zip(grads, expected):
        numpy_reference.assert_close(got, want, rtol=1e-6)


def test_without_a_predictor_the_projections_are_compared():
    rng = np.random.default_rng(1)
    projections = [rng.standard_normal((5, 4)) for _ in range(2)]
    queue = random_queue(rng, 7, 4)
    res, grads = run_module(module(4, 7, 0.1, queue), projections)
    numpy_reference.assert_close(res["loss"].item(), numpy_nnclr(projections, projections, queue, 0.1)["loss"])
    # the gradient reaches the projections through the predictions' side only (the lookup is fixed)
    expected = numpy_reference.central_difference(
        lambda ps: numpy_nnclr(projections, ps, queue, 0.1)["loss"], projections)
    for got, want in zip(grads, expected):
        numpy_reference.assert_close(got, want, rtol=1e-6)


def test_the_queue_takes_the_first_views_unit_projections_in_order_and_wraps():
    rng = np.random.default_rng(2)
    d, size, n = 3, 5, 2
    queue = random_queue(rng, size, d)
    loss = module(d, size, 0.1, queue)
    rows, ptr = [r.copy() for r in queue], 0
    for _ in range(4):
        projections = [rng.standard_normal((n, d)) for _ in range(2)]
        res, _ = run_module(loss, projections)
        # this step looked its neighbours up in the queue as it was before the step
        numpy_reference.assert_close(res["loss"].item(), numpy_nnclr(projections, projections, np.array(rows), 0.1)["loss"])
        for z in projections[0]:
            rows[ptr] = unit(z)
            ptr = (ptr + 1) % size
        numpy_reference.assert_close(loss.queue.numpy(), np.array(rows), rtol=1e-14)
        assert int(loss.queue_ptr) == ptr


def test_a_queue_holding_the_batch_finds_each_views_own_image():
    rng = np.random.default_rng(3)
    projections = [rng.standard_normal((6, 8)) for _ in range(2)]
    queue = np.array([unit(z) for z in projections[0]])  # what the queue holds after a step on this batch
    res, _ = run_module(module(8, 6, 0.1, queue), projections)
    # view 1's neighbours are its own rows (cosine 1); view 2's are whatever is closest
    second = np.mean([nearest(z, queue)[1] for z in projections[1]])
    numpy_reference.assert_close(res["nn_cosine"].item(), (1.0 + second) / 2)


def test_evaluation_mode_leaves_the_queue_alone():
    loss = clrun.create("loss", "clrun/nnclr", in_dim=4, queue_size=8).eval()
    before = loss.queue.clone()
    loss(step_outputs([torch.randn(3, 4), torch.randn(3, 4)]))
    assert torch.equal(loss.queue, before) and int(loss.queue_ptr) == 0


def test_defaults_are_the_papers():
    loss = clrun.create("loss", "clrun/nnclr", in_dim=4)
    assert loss.temperature == 0.1 and loss.queue_size == 98304 and set(loss.state_dict()) == {"queue", "queue_ptr"}


def test_prediction_width_must_match_the_projections():
    loss = clrun.create("loss", "clrun/nnclr", in_dim=4, queue_size=8)
    with pytest.raises(clrun.ComponentError) as info:
        loss(step_outputs([torch.randn(3, 4)] * 2, predictions=[torch.randn(3, 6)] * 2))
    assert str(info.value) == ("clrun/nnclr needs the global views' projections and predictions as (batch, 4) "
                               "tensors with the same batch size; got [(3, 4), (3, 4), (3, 6), (3, 6)]")
