"""clrun/moco against an independent float64 NumPy implementation of MoCo's queue InfoNCE.

Reference: He et al. (2020), "Momentum Contrast for Unsupervised Visual Representation Learning",
eq. (1) and Algorithm 1, symmetrized over the global views (MoCo v2 / solo-learn's mocov2plus). With
queries u = q / ||q|| (online), keys w = k / ||k|| (target, no gradient) and the queue rows Q_m:

    l_n(i, j) = -log( exp(u_in.w_jn / tau) / (exp(u_in.w_jn / tau) + sum_m exp(u_in.Q_m / tau)) )
    L         = mean over ordered pairs i != j of mean_n l_n(i, j)

Gradients of the reference are central finite differences in float64. The queue's FIFO order is
checked against a plain Python model that writes one key at a time. Nothing here is shared with
clrun.plugins.losses.moco: the reference loops over queries in NumPy. What every loss promises
(detached metrics, float32 under autocast, ...) is checked for all of them by
tests/unit/testing/test_loss_contracts.py.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clrun import ComponentError, UserError, loss_kit
from clrun.plugins.losses.moco import MoCoLoss
from clrun.plugins.losses.queue import ring_enqueue
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
numpy_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numpy_reference)

# ---------------------------------------------------------------- NumPy reference (float64, loops)


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(np.dot(v, v)))


def numpy_moco(queries: list[np.ndarray], keys: list[np.ndarray], queue: np.ndarray, tau: float) -> dict[str, float]:
    """MoCo's loss and diagnostics, query by query, straight from the formula."""
    g, n = len(queries), queries[0].shape[0]
    losses, correct, pos, neg, entropy = [], 0, [], [], []
    for i in range(g):
        for j in range(g):
            if i == j:
                continue
            for r in range(n):
                u = unit(queries[i][r])
                w = unit(keys[j][r])
                logits = [float(np.dot(u, w)) / tau] + [float(np.dot(u, qm)) / tau for qm in queue]
                top = max(logits)
                lse = top + math.log(sum(math.exp(x - top) for x in logits))
                losses.append(lse - logits[0])
                probs = [math.exp(x - lse) for x in logits]
                entropy.append(-sum(p * math.log(p) for p in probs if p > 0))
                correct += int(np.argmax(logits) == 0)
                pos.append(logits[0] * tau)
    for i in range(g):
        for r in range(n):
            u = unit(queries[i][r])
            neg.extend(float(np.dot(u, qm)) for qm in queue)
    return {
        "loss": sum(losses) / len(losses),
        "contrastive_acc": correct / len(losses),
        "logit_entropy": sum(entropy) / len(entropy),
        "pos_cosine": sum(pos) / len(pos),
        "neg_cosine": sum(neg) / len(neg),
    }


def finite_difference(queries, keys, queue, tau) -> list[np.ndarray]:
    return numpy_reference.central_difference(lambda qs: numpy_moco(qs, keys, queue, tau)["loss"], queries)


class RingModel:
    """The FIFO queue written one key at a time."""

    def __init__(self, rows: np.ndarray):
        self.rows = [r.copy() for r in rows]
        self.ptr = 0

    def push(self, keys: np.ndarray) -> None:
        for key in keys:
            self.rows[self.ptr] = key.copy()
            self.ptr = (self.ptr + 1) % len(self.rows)


# ---------------------------------------------------------------- helpers


def outputs(projections, is_global, targets, step=0):
    return step_outputs(projections, is_global, target_projections=targets, step=step, total_steps=1000)


def random_queue(rng, size, d):
    return np.array([unit(rng.standard_normal(d)) for _ in range(size)])


def make_inputs(rng, n, d, g):
    """Asymmetric views: different scales and offsets per view; keys correlated with the queries."""
    queries = [(0.2 + 2.0 * v) * rng.standard_normal((n, d)) + 0.3 * v for v in range(g)]
    keys = [rng.uniform(0.5, 3.0, size=(n, 1)) * (queries[v] + rng.standard_normal((n, d))) for v in range(g)]
    return queries, keys


def run_module(loss, queries, keys, local=None, step=0):
    q = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in queries]
    k = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in keys]  # must get no gradient
    projections, flags = list(q), [True] * len(q)
    if local is not None:
        loc = torch.tensor(local, dtype=torch.float64, requires_grad=True)
        projections.insert(1, loc)
        flags.insert(1, False)
    res = loss(outputs(projections, flags, k, step))
    res["loss"].backward()
    for t in k:
        assert t.grad is None
    if local is not None:
        assert projections[1].grad is None
    return res, [t.grad.numpy() for t in q]


def fp64_loss(d, size, tau, queue):
    loss = MoCoLoss(d, queue_size=size, temperature=tau).double()
    with torch.no_grad():
        loss.queue.copy_(torch.tensor(queue))
    return loss


# ---------------------------------------------------------------- the module against the reference


@pytest.mark.parametrize(
    "n,d,size,g,tau", [(6, 4, 5, 2, 0.2), (3, 5, 7, 3, 0.07), (1, 3, 1, 2, 1.0), (6, 4, 9, 2, 0.5)]
)
def test_loss_metrics_and_gradients_match_numpy(n, d, size, g, tau):
    rng = np.random.default_rng(n * 100 + d * 10 + g)
    queries, keys = make_inputs(rng, n, d, g)
    queue = random_queue(rng, size, d)
    res, grads = run_module(fp64_loss(d, size, tau, queue), queries, keys)
    ref = numpy_moco(queries, keys, queue, tau)

    assert set(res) == {"loss", "contrastive_acc", "logit_entropy", "pos_cosine", "neg_cosine"}
    assert res["loss"].dtype == torch.float64 and res["loss"].ndim == 0
    numpy_reference.assert_close(res["loss"].item(), ref["loss"])
    assert res["contrastive_acc"].item() == pytest.approx(ref["contrastive_acc"], abs=1e-12)
    numpy_reference.assert_close(res["pos_cosine"].item(), ref["pos_cosine"])
    numpy_reference.assert_close(res["neg_cosine"].item(), ref["neg_cosine"])
    numpy_reference.assert_close(res["logit_entropy"].item(), ref["logit_entropy"])
    for got, want in zip(grads, finite_difference(queries, keys, queue, tau)):
        numpy_reference.assert_close(got, want, rtol=1e-6)


def test_two_views_is_the_mean_of_the_two_swapped_directions():
    rng = np.random.default_rng(0)
    queries, keys = make_inputs(rng, 6, 4, 2)
    queue = random_queue(rng, 5, 4)

    def one_direction(i, j):  # with a view repeated, both ordered pairs are L(q_i, k_j)
        return numpy_moco([queries[i], queries[i]], [keys[j], keys[j]], queue, 0.2)["loss"]

    res, _ = run_module(fp64_loss(4, 5, 0.2, queue), queries, keys)
    numpy_reference.assert_close(res["loss"].item(), (one_direction(0, 1) + one_direction(1, 0)) / 2)
    same_view = (one_direction(0, 0) + one_direction(1, 1)) / 2
    assert abs(res["loss"].item() - same_view) > 1e-3


def test_local_views_are_ignored():
    rng = np.random.default_rng(1)
    queries, keys = make_inputs(rng, 6, 4, 2)
    queue = random_queue(rng, 5, 4)
    res, grads = run_module(fp64_loss(4, 5, 0.2, queue), queries, keys, local=rng.standard_normal((6, 4)))
    numpy_reference.assert_close(res["loss"].item(), numpy_moco(queries, keys, queue, 0.2)["loss"])
    for got, want in zip(grads, finite_difference(queries, keys, queue, 0.2)):
        numpy_reference.assert_close(got, want, rtol=1e-6)


def test_partly_solvable_case_has_intermediate_accuracy():
    rng = np.random.default_rng(7)
    queries, keys = make_inputs(rng, 16, 8, 2)
    queue = random_queue(rng, 32, 8)
    ref = numpy_moco(queries, keys, queue, 0.2)
    assert 0.0 < ref["contrastive_acc"] < 1.0
    res, _ = run_module(fp64_loss(8, 32, 0.2, queue), queries, keys)
    assert res["contrastive_acc"].item() == pytest.approx(ref["contrastive_acc"], abs=1e-12)


# ---------------------------------------------------------------- the queue


def test_ring_enqueue_wraps_in_order():
    queue = torch.zeros(7, 2)
    ptr = torch.zeros((), dtype=torch.long)
    model = RingModel(np.zeros((7, 2)))
    counter = 0
    for batch in (4, 4, 4, 3, 1, 6):
        items = torch.arange(counter, counter + batch, dtype=torch.float32)[:, None].repeat(1, 2) + 0.5
        counter += batch
        ring_enqueue(queue, ptr, items)
        model.push(items.numpy())
        assert torch.equal(queue, torch.tensor(np.array(model.rows), dtype=torch.float32))
        assert int(ptr) == model.ptr
    assert int(ptr) == counter % 7 == 1


def test_ring_enqueue_larger_than_the_queue_keeps_the_newest():
    queue = torch.zeros(5, 1)
    ptr = torch.tensor(3)
    ring_enqueue(queue, ptr, torch.arange(12.0)[:, None])
    # written one by one from row 3: row r holds the last t with (3 + t) % 5 == r
    assert queue[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert int(ptr) == (3 + 12) % 5 == 0
    ring_enqueue(queue, ptr, torch.arange(100.0, 106.0)[:, None])
    assert queue[:, 0].tolist() == [105.0, 101.0, 102.0, 103.0, 104.0]
    assert int(ptr) == 1


def test_module_enqueues_keys_of_all_global_views_in_order_and_wraps():
    d, size, n = 3, 7, 2  # 2 views x 2 images = 4 keys per step: does not divide 7
    rng = np.random.default_rng(3)
    start = random_queue(rng, size, d)
    loss = fp64_loss(d, size, 0.2, start)
    model = RingModel(start)
    for step in range(5):
        queries, keys = make_inputs(rng, n, d, 2)
        res, _ = run_module(loss, queries, keys, step=step)
        # this step's loss used the queue as it was before the step
        numpy_reference.assert_close(res["loss"].item(), numpy_moco(queries, keys, np.array(model.rows), 0.2)["loss"])
        model.push(np.array([unit(k) for view in keys for k in view]))  # view 0's keys, then view 1's
        numpy_reference.assert_close(loss.queue.numpy(), np.array(model.rows), rtol=1e-14)
        assert int(loss.queue_ptr) == model.ptr
    assert model.ptr == (5 * 4) % 7
    assert loss.queue.dtype == torch.float64 and not loss.queue.requires_grad


def test_evaluation_mode_does_not_change_the_state():
    rng = np.random.default_rng(4)
    loss = fp64_loss(4, 5, 0.2, random_queue(rng, 5, 4)).eval()
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    queries, keys = make_inputs(rng, 3, 4, 2)
    run_module(loss, queries, keys)
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k])


def test_initial_queue_is_random_unit_vectors_from_the_global_rng():
    torch.manual_seed(0)
    a = MoCoLoss(8, queue_size=100)
    torch.manual_seed(0)
    b = MoCoLoss(8, queue_size=100)
    c = MoCoLoss(8, queue_size=100)
    assert a.queue.shape == (100, 8) and a.queue.dtype == torch.float32
    assert torch.equal(a.queue, b.queue) and not torch.equal(a.queue, c.queue)
    assert torch.allclose(a.queue.norm(dim=1), torch.ones(100), atol=1e-6)
    assert a.queue_ptr.dtype == torch.long and int(a.queue_ptr) == 0


def test_state_dict_round_trip_restores_the_queue_exactly():
    torch.manual_seed(1)
    loss = MoCoLoss(4, queue_size=9)
    gen = torch.Generator().manual_seed(5)
    batches = [[torch.randn(2, 4, generator=gen) for _ in range(4)] for _ in range(4)]

    def step(module, b, s):
        return module(outputs(b[:2], [True, True], b[2:], step=s))

    for s in range(3):
        step(loss, batches[s], s)
    state = loss.state_dict()
    assert set(state) == {"queue", "queue_ptr"}
    torch.manual_seed(2)
    fresh = MoCoLoss(4, queue_size=9)
    assert not torch.equal(fresh.queue, loss.queue)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, loss.queue) and torch.equal(fresh.queue_ptr, loss.queue_ptr)
    a, b = step(loss, batches[3], 3), step(fresh, batches[3], 3)
    for key in a:
        assert torch.equal(a[key], b[key])
    assert torch.equal(fresh.queue, loss.queue) and int(fresh.queue_ptr) == int(loss.queue_ptr) == (4 * 4) % 9


# ---------------------------------------------------------------- precision


def test_half_precision_steps_keep_the_queue_float32():
    torch.manual_seed(3)
    loss = MoCoLoss(16, queue_size=64, temperature=0.2)
    q = [torch.randn(8, 16) for _ in range(2)]
    k = [x + 0.1 * torch.randn(8, 16) for x in q]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss(outputs([x.bfloat16() for x in q], [True, True], [x.bfloat16() for x in k]))
    assert int(loss.queue_ptr) == 16  # the bf16 keys were queued...
    assert loss.queue.dtype == torch.float32  # ...in the queue's own precision


# ---------------------------------------------------------------- errors


def test_missing_target_network_error():
    loss = MoCoLoss(4, queue_size=8)
    z = [torch.randn(3, 4) for _ in range(2)]
    with pytest.raises(UserError) as info:
        loss(outputs(z, [True, True], None))
    assert str(info.value) == (
        "clrun/moco needs a momentum target network: add a `target:` section to the recipe (e.g. momentum: 0.99)"
    )


def test_one_global_view_error():
    loss = MoCoLoss(4, queue_size=8)
    z = [torch.randn(3, 4) for _ in range(3)]
    with pytest.raises(ComponentError) as info:
        loss(outputs(z, [True, False, False], [z[0]]))
    assert str(info.value) == (
        "clrun/moco needs at least 2 global views (each view's query is matched with the key of another "
        "global view); the recipe makes 1. Use a global view section with count 2 (a section without `local: true`)."
    )


def test_target_count_and_shape_errors():
    loss = MoCoLoss(4, queue_size=8)
    z = [torch.randn(3, 4) for _ in range(2)]
    with pytest.raises(ComponentError) as info:
        loss(outputs(z, [True, True], [z[0]]))
    assert str(info.value) == (
        "clrun/moco got 1 target projections for 2 global views; it needs one per global view"
    )
    with pytest.raises(ComponentError) as info:
        loss(outputs([torch.randn(3, 5), torch.randn(3, 5)], [True, True], [torch.randn(3, 5)] * 2))
    assert str(info.value) == (
        "clrun/moco needs the global views' projections and target projections as (batch, 4) tensors with "
        "the same batch size; got [(3, 5), (3, 5), (3, 5), (3, 5)]"
    )
    with pytest.raises(ComponentError) as info:
        empty = [torch.zeros(0, 4)] * 2
        loss(outputs(empty, [True, True], empty))
    assert str(info.value) == "clrun/moco needs at least 1 image per batch; got an empty batch"


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "16"])
def test_bad_queue_size(value):
    with pytest.raises(ComponentError) as info:
        MoCoLoss(4, queue_size=value)
    assert str(info.value) == (
        f"clrun/moco: queue_size must be an integer >= 1 (MoCo uses 65536; keep it a few times the batch "
        f"size), got {value!r}"
    )


@pytest.mark.parametrize("value", [0, 0.0, -0.2, float("nan"), float("inf"), True, "0.2"])
def test_bad_temperature(value):
    with pytest.raises(ComponentError) as info:
        MoCoLoss(4, temperature=value)
    assert str(info.value) == (
        f"clrun/moco: temperature must be a number >= 0.001 (MoCo v2 uses 0.2, MoCo v1 0.07), got {value!r}: "
        f"{loss_kit.SATURATES}"
    )


def test_bad_in_dim():
    with pytest.raises(ComponentError, match=r"^clrun/moco: in_dim must be an integer >= 1 .*got 0$"):
        MoCoLoss(0)


def test_defaults_are_the_papers():
    loss = MoCoLoss(8)
    assert loss.queue_size == 65536 and loss.temperature == 0.2
    assert loss.queue.shape == (65536, 8)
