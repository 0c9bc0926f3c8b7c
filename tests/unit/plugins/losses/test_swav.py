"""clrun/swav and sinkhorn_knopp against an independent float64 NumPy implementation of SwAV.

Reference: Caron et al. (2020), "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", eqs. (2)-(3), and ``distributed_sinkhorn`` / the training loop of the official code
(facebookresearch/swav, main_swav.py). With unit prototypes c_k, z_v = z / ||z|| per view and
scores s_v[n, k] = z_vn . c_k:

    Sinkhorn-Knopp:  Q = exp(S / eps)^T; Q /= sum Q; repeat: rows /= row sums, /K; cols /= col sums, /B
                     codes = (B Q)^T
    loss:            mean_{global i} mean_{v != i} mean_n -sum_k q_i[n, k] log softmax(s_v[n] / T)[k]

The codes are a stop-gradient, so the reference gradients are central finite differences of the
loss with the codes held at their value at the unperturbed point. The prototypes enter the module's
graph after their in-place normalization, so their gradient is taken w.r.t. the normalized rows.
Nothing here is shared with clrun.plugins.losses.swav or .sinkhorn: the reference is plain loops.
What every loss promises (detached metrics, float32 under autocast, ...) is checked for all of them
by tests/unit/testing/test_loss_contracts.py.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clrun import ComponentError, UserError, loss_kit
from clrun.plugins.losses.sinkhorn import sinkhorn_knopp
from clrun.plugins.losses.swav import SwAVLoss
from clrun.testing import step_outputs

_spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).parents[3] / "helpers" / "numpy_reference.py")
numpy_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numpy_reference)

# ---------------------------------------------------------------- NumPy reference (float64, loops)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return np.array([r / math.sqrt(float(np.dot(r, r))) for r in x])


def numpy_sinkhorn(scores: np.ndarray, iterations: int, eps: float) -> np.ndarray:
    b, k = scores.shape
    q = np.exp(scores / eps).T.copy()  # (K, B); the test scores are small enough for the naive form
    q /= q.sum()
    for _ in range(iterations):
        for row in range(k):
            q[row, :] /= q[row, :].sum()
        q /= k
        for col in range(b):
            q[:, col] /= q[:, col].sum()
        q /= b
    return (q * b).T


def numpy_codes(views, is_global, protos, iterations, eps, queues=None):
    """Codes per global view; ``queues[slot]`` (already unit rows) is appended before Sinkhorn-Knopp."""
    n = views[0].shape[0]
    codes = []
    for slot, i in enumerate([i for i, g in enumerate(is_global) if g]):
        s = unit_rows(views[i]) @ protos.T
        if queues is not None:
            s = np.vstack([s, queues[slot] @ protos.T])
        codes.append(numpy_sinkhorn(s, iterations, eps)[:n])
    return codes


def numpy_swav(views, is_global, protos, temperature, codes) -> float:
    """The swapped-prediction loss for given codes (one per global view); ``protos`` used as given."""
    global_idx = [i for i, g in enumerate(is_global) if g]
    per_global = []
    for q, i in zip(codes, global_idx):
        sub = []
        for v in range(len(views)):
            if v == i:
                continue
            total = 0.0
            for n, z in enumerate(unit_rows(views[v])):
                x = np.array([float(np.dot(z, c)) / temperature for c in protos])
                log_p = x - (x.max() + math.log(float(np.exp(x - x.max()).sum())))
                total -= float(np.dot(q[n], log_p))
            sub.append(total / len(views[v]))
        per_global.append(sum(sub) / len(sub))
    return sum(per_global) / len(per_global)


def fd_grads(views, is_global, protos, temperature, codes):
    """Finite differences w.r.t. every view and the prototypes, codes fixed."""
    *grads, gp = numpy_reference.central_difference(
        lambda xs: numpy_swav(xs[:-1], is_global, xs[-1], temperature, codes), [*views, protos]
    )
    return grads, gp


# ---------------------------------------------------------------- helpers


def outputs(projections, is_global, step=0):
    return step_outputs(projections, is_global, step=step, total_steps=1000)


def make_views(rng, n, d, flags):
    """Asymmetric views: each with its own scale and offset, correlated with a shared base."""
    base = rng.standard_normal((n, d))
    return [
        (0.3 + 1.5 * v) * (base + (0.5 + 0.5 * v) * rng.standard_normal((n, d))) + 0.2 * v for v in range(len(flags))
    ]


def fp64_loss(d, k, protos, **kwargs):
    loss = SwAVLoss(d, num_prototypes=k, **kwargs).double()
    with torch.no_grad():
        loss.prototypes.weight.copy_(torch.tensor(protos))
    return loss


def run_module(loss, views, flags, step=0):
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in views]
    res = loss(outputs(tensors, flags, step))
    res["loss"].backward()
    # a global view whose only partners are local views is a target only: no gradient reaches it
    return res, [np.zeros_like(v) if t.grad is None else t.grad.numpy() for v, t in zip(views, tensors)]


# ---------------------------------------------------------------- Sinkhorn-Knopp


@pytest.mark.parametrize("b,k,iterations,eps", [(6, 4, 3, 0.05), (5, 7, 1, 0.1), (3, 3, 10, 0.5), (1, 4, 3, 0.05)])
def test_sinkhorn_matches_numpy(b, k, iterations, eps):
    rng = np.random.default_rng(b * 10 + k)
    scores = np.tanh(rng.standard_normal((b, k)))  # cosines in (-1, 1), like the module's scores
    got = sinkhorn_knopp(torch.tensor(scores), iterations, eps)
    assert got.dtype == torch.float64 and got.shape == (b, k)
    numpy_reference.assert_close(got.numpy(), numpy_sinkhorn(scores, iterations, eps))


def test_sinkhorn_marginals():
    rng = np.random.default_rng(0)
    b, k = 6, 4
    scores = torch.tensor(np.tanh(rng.standard_normal((b, k))))
    codes = sinkhorn_knopp(scores, 3, 0.05)
    # every sample's code sums to 1 exactly after the last (column) step
    np.testing.assert_allclose(codes.sum(dim=1).numpy(), np.ones(b), rtol=0, atol=1e-12)
    # every prototype's share tends to B / K as the iterations converge
    converged = sinkhorn_knopp(scores, 500, 0.5)
    np.testing.assert_allclose(converged.sum(dim=1).numpy(), np.ones(b), rtol=0, atol=1e-12)
    np.testing.assert_allclose(converged.sum(dim=0).numpy(), np.full(k, b / k), rtol=0, atol=1e-9)
    # ... and three iterations already get closer to it than one
    err = lambda c: float((c.sum(dim=0) - b / k).abs().max())  # noqa: E731
    assert err(sinkhorn_knopp(scores, 3, 0.5)) < err(sinkhorn_knopp(scores, 1, 0.5))


def test_sinkhorn_is_numerically_safe():
    scores = torch.tensor([[60.0, -60.0, 0.0], [-60.0, 60.0, 1.0], [0.0, 2.0, 60.0], [59.0, 0.0, -60.0]])
    # exp(60 / 0.05) overflows even float64; the log-domain form does not
    codes = sinkhorn_knopp(scores, 3, 0.05)
    assert codes.dtype == torch.float32 and torch.isfinite(codes).all()
    np.testing.assert_allclose(codes.sum(dim=1).numpy(), np.ones(4), rtol=0, atol=1e-6)
    assert codes.argmax(dim=1).tolist() == [0, 1, 2, 0]


def test_sinkhorn_half_precision_computes_in_float32():
    scores = torch.tanh(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)))
    codes = sinkhorn_knopp(scores.bfloat16(), 3, 0.05)
    assert codes.dtype == torch.float32
    ref = numpy_sinkhorn(scores.bfloat16().double().numpy(), 3, 0.05)
    np.testing.assert_allclose(codes.numpy(), ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- the loss against the reference


CASES = [
    # (n, d, k, flags, temperature, iterations, eps)
    (6, 4, 5, [True, True], 0.1, 3, 0.05),
    (6, 4, 3, [True, True, False, False], 0.1, 3, 0.05),
    (4, 3, 6, [True, False, True], 0.5, 1, 0.3),
    (5, 4, 4, [True, True, True], 0.2, 5, 0.1),
    (3, 4, 5, [True, False], 0.1, 3, 0.05),
]


@pytest.mark.parametrize("n,d,k,flags,temperature,iterations,eps", CASES)
def test_loss_and_gradients_match_numpy(n, d, k, flags, temperature, iterations, eps):
    rng = np.random.default_rng(n * 100 + d * 10 + k)
    views = make_views(rng, n, d, flags)
    raw = rng.standard_normal((k, d)) * rng.uniform(0.2, 3.0, size=(k, 1))  # rows not unit yet
    loss = fp64_loss(d, k, raw, temperature=temperature, sinkhorn_iterations=iterations, epsilon=eps,
                     freeze_prototypes_steps=0)
    res, grads = run_module(loss, views, flags)

    protos = unit_rows(raw)
    codes = numpy_codes(views, flags, protos, iterations, eps)
    assert set(res) == {"loss", "code_entropy", "prototypes_used"}
    assert res["loss"].dtype == torch.float64 and res["loss"].ndim == 0
    numpy_reference.assert_close(res["loss"].item(), numpy_swav(views, flags, protos, temperature, codes))
    # the forward normalized the prototype rows in place
    numpy_reference.assert_close(loss.prototypes.weight.detach().numpy(), protos, rtol=1e-14)

    ref_views, ref_protos = fd_grads(views, flags, protos, temperature, codes)
    for got, want in zip(grads, ref_views):
        numpy_reference.assert_close(got, want, rtol=1e-6)
    numpy_reference.assert_close(loss.prototypes.weight.grad.numpy(), ref_protos, rtol=1e-6)

    mean_code = np.mean(np.vstack(codes), axis=0)
    numpy_reference.assert_close(res["code_entropy"].item(), -float(np.sum(mean_code * np.log(mean_code))))
    used = {int(np.argmax(row)) for c in codes for row in c}
    assert res["prototypes_used"].item() == pytest.approx(len(used) / k, abs=1e-15)


def test_codes_are_swapped_between_the_views():
    rng = np.random.default_rng(3)
    flags = [True, True]
    views = make_views(rng, 6, 4, flags)
    protos = unit_rows(rng.standard_normal((5, 4)))
    res, _ = run_module(fp64_loss(4, 5, protos, freeze_prototypes_steps=0), views, flags)
    q1, q2 = numpy_codes(views, flags, protos, 3, 0.05)
    swapped = numpy_swav(views, flags, protos, 0.1, [q1, q2])
    numpy_reference.assert_close(res["loss"].item(), swapped)
    # predicting each view's own code instead is a different number
    unswapped = numpy_swav(views, flags, protos, 0.1, [q2, q1])
    assert abs(res["loss"].item() - unswapped) > 1e-3


# ---------------------------------------------------------------- frozen prototypes


@pytest.mark.parametrize("step,frozen", [(0, True), (312, True), (313, False), (1000, False)])
def test_prototypes_get_no_gradient_before_freeze_prototypes_steps(step, frozen):
    rng = np.random.default_rng(5)
    flags = [True, True]
    views = make_views(rng, 6, 4, flags)
    protos = rng.standard_normal((5, 4))
    loss = fp64_loss(4, 5, protos)  # default freeze_prototypes_steps=313
    res, grads = run_module(loss, views, flags, step=step)
    assert all(np.abs(g).max() > 0 for g in grads)  # the views are trained either way
    if frozen:
        assert loss.prototypes.weight.grad is None
    else:
        assert loss.prototypes.weight.grad is not None and loss.prototypes.weight.grad.abs().max() > 0
    # the value does not depend on whether the prototypes are frozen
    codes = numpy_codes(views, flags, unit_rows(protos), 3, 0.05)
    numpy_reference.assert_close(res["loss"].item(), numpy_swav(views, flags, unit_rows(protos), 0.1, codes))


def test_evaluation_mode_changes_no_state():
    rng = np.random.default_rng(6)
    flags = [True, True]
    loss = fp64_loss(4, 5, rng.standard_normal((5, 4)), queue_length=4).eval()
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    views = make_views(rng, 3, 4, flags)
    res, _ = run_module(loss, views, flags, step=500)
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k])
    protos = unit_rows(before["prototypes.weight"].numpy())  # normalized on the fly, not in place
    codes = numpy_codes(views, flags, protos, 3, 0.05)
    numpy_reference.assert_close(res["loss"].item(), numpy_swav(views, flags, protos, 0.1, codes))


# ---------------------------------------------------------------- the queue


def test_queue_is_pushed_newest_first_and_used_only_when_full():
    d, k, n, length = 4, 5, 2, 5  # batches of 2 do not divide 5
    flags = [True, False, True]  # two global views around a local one
    rng = np.random.default_rng(7)
    protos = unit_rows(rng.standard_normal((k, d)))
    loss = fp64_loss(d, k, protos, queue_length=length, freeze_prototypes_steps=0)
    model = [[], []]  # per global view, newest first
    for step in range(6):
        views = make_views(rng, n, d, flags)
        full = all(len(m) == length for m in model)
        res, _ = run_module(loss, views, flags, step=step)
        # the queue is used exactly when it is full (from step 3 on: 2 + 2 + 2 >= 5)
        assert res["queue_used"].item() == float(full) and full == (step >= 3)
        queues = [np.array(m) for m in model] if full else None
        codes = numpy_codes(views, flags, protos, 3, 0.05, queues)
        numpy_reference.assert_close(res["loss"].item(), numpy_swav(views, flags, protos, 0.1, codes))
        if full:  # and it matters
            plain = numpy_swav(views, flags, protos, 0.1, numpy_codes(views, flags, protos, 3, 0.05))
            assert abs(res["loss"].item() - plain) > 1e-9
        for slot, i in enumerate([0, 2]):
            model[slot] = (list(unit_rows(views[i])) + model[slot])[:length]
        assert int(loss.queue_fill) == min((step + 1) * n, length)
        for slot in range(2):
            filled = len(model[slot])
            numpy_reference.assert_close(loss.queue[slot, :filled].numpy(), np.array(model[slot]), rtol=1e-14)
            assert not loss.queue[slot, filled:].any()
        protos = loss.prototypes.weight.detach().numpy().copy()  # unchanged: no optimizer here


def test_queue_is_not_used_before_queue_start_step():
    d, k, n = 4, 5, 3
    flags = [True, True]
    rng = np.random.default_rng(8)
    protos = unit_rows(rng.standard_normal((k, d)))
    loss = fp64_loss(d, k, protos, queue_length=3, queue_start_step=10, freeze_prototypes_steps=0)
    run_module(loss, make_views(rng, n, d, flags), flags, step=0)
    assert int(loss.queue_fill) == 3  # full after one batch of 3
    views = make_views(rng, n, d, flags)
    res, _ = run_module(loss, views, flags, step=9)
    assert res["queue_used"].item() == 0.0
    numpy_reference.assert_close(res["loss"].item(), numpy_swav(views, flags, protos, 0.1, numpy_codes(views, flags, protos, 3, 0.05)))
    queues = [loss.queue[s].numpy().copy() for s in range(2)]
    views = make_views(rng, n, d, flags)
    res, _ = run_module(loss, views, flags, step=10)
    assert res["queue_used"].item() == 1.0
    codes = numpy_codes(views, flags, protos, 3, 0.05, queues)
    numpy_reference.assert_close(res["loss"].item(), numpy_swav(views, flags, protos, 0.1, codes))


def test_a_batch_larger_than_the_queue_keeps_its_first_rows():
    loss = SwAVLoss(3, num_prototypes=4, queue_length=2).double()
    views = [torch.randn(5, 3, dtype=torch.float64) for _ in range(2)]
    loss(outputs(views, [True, True]))
    assert int(loss.queue_fill) == 2
    for slot in range(2):
        numpy_reference.assert_close(loss.queue[slot].numpy(), unit_rows(views[slot].numpy())[:2], rtol=1e-14)


def test_state_dict_round_trip_restores_everything_exactly():
    torch.manual_seed(0)
    loss = SwAVLoss(4, num_prototypes=6, queue_length=5, freeze_prototypes_steps=1)
    gen = torch.Generator().manual_seed(1)
    batches = [[torch.randn(2, 4, generator=gen).requires_grad_() for _ in range(3)] for _ in range(5)]
    flags = [True, True, False]
    for step in range(4):  # fills the queue; the prototypes move from step 1 on
        loss.prototypes.weight.grad = None
        loss(outputs(batches[step], flags, step))["loss"].backward()
        if loss.prototypes.weight.grad is not None:  # a plain SGD step
            with torch.no_grad():
                loss.prototypes.weight -= 0.5 * loss.prototypes.weight.grad
    state = loss.state_dict()
    assert set(state) == {"prototypes.weight", "queue", "queue_fill"}
    torch.manual_seed(1)
    fresh = SwAVLoss(4, num_prototypes=6, queue_length=5, freeze_prototypes_steps=1)
    assert not torch.equal(fresh.prototypes.weight, loss.prototypes.weight)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    a = loss(outputs(batches[4], flags, 4))
    b = fresh(outputs(batches[4], flags, 4))
    assert a["queue_used"].item() == 1.0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, loss.state_dict()[key]), key


# ---------------------------------------------------------------- precision under autocast


def test_autocast_gives_a_float32_loss():
    torch.manual_seed(2)
    loss = SwAVLoss(16, num_prototypes=10, queue_length=8)
    views = [torch.randn(8, 16) for _ in range(3)]
    flags = [True, True, False]
    loss(outputs(views, flags))  # fills the queue and normalizes the prototypes
    loss.eval()
    plain = loss(outputs(views, flags))["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = loss(outputs(views, flags))
    assert under["queue_used"].item() == 1.0
    assert plain.dtype == under["loss"].dtype == torch.float32
    assert under["loss"].item() == pytest.approx(plain.item(), rel=1e-6)
    loss.train()
    half = loss(outputs([v.bfloat16() for v in views], flags))["loss"]
    assert half.dtype == torch.float32
    assert loss.prototypes.weight.dtype == loss.queue.dtype == torch.float32


# ---------------------------------------------------------------- errors


def test_wrong_number_of_global_views_for_the_queue():
    loss = SwAVLoss(4, num_prototypes=5, queue_length=8)
    views = [torch.randn(3, 4) for _ in range(3)]
    with pytest.raises(UserError) as info:
        loss(outputs(views, [True, True, True]))
    assert str(info.value) == (
        "clrun/swav's queue is sized for queue_views=2 global views, but the recipe makes 3; "
        "set queue_views: 3 in the loss section"
    )
    # without a queue any number of global views works
    assert torch.isfinite(SwAVLoss(4, num_prototypes=5)(outputs(views, [True, True, True]))["loss"])


def test_view_errors():
    loss = SwAVLoss(4, num_prototypes=5)
    with pytest.raises(ComponentError) as info:
        loss(outputs([torch.randn(3, 4)] * 2, [False, False]))
    assert str(info.value) == (
        "clrun/swav needs at least 1 global view (its codes are the targets); the recipe makes 0. "
        "Add a global view section (a section without `local: true`)."
    )
    with pytest.raises(ComponentError) as info:
        loss(outputs([torch.randn(3, 4)], [True]))
    assert str(info.value) == (
        "clrun/swav needs at least 2 views (the code of one view is predicted from another); the recipe "
        "makes 1. Use a global view section with count 2."
    )
    with pytest.raises(ComponentError) as info:
        loss(outputs([torch.randn(3, 4), torch.randn(2, 4)], [True, True]))
    assert str(info.value) == (
        "clrun/swav needs every view's projections as (batch, 4) tensors with the same batch size; "
        "got [(3, 4), (2, 4)]"
    )
    with pytest.raises(ComponentError) as info:
        loss(outputs([torch.zeros(0, 4)] * 2, [True, True]))
    assert str(info.value) == "clrun/swav needs at least 1 image per batch; got an empty batch"


@pytest.mark.parametrize(
    "arg,value,message",
    [
        ("num_prototypes", 1, "an integer >= 2 (SwAV uses 3000 on ImageNet)"),
        ("num_prototypes", 30.0, "an integer >= 2 (SwAV uses 3000 on ImageNet)"),
        ("temperature", 0, "a number >= 0.001 (SwAV uses 0.1)"),
        ("temperature", float("nan"), "a number >= 0.001 (SwAV uses 0.1)"),
        ("sinkhorn_iterations", 0, "an integer >= 1 (SwAV uses 3)"),
        ("epsilon", -0.05, "a number > 0 (SwAV uses 0.05)"),
        ("epsilon", "0.05", "a number > 0 (SwAV uses 0.05)"),
        ("freeze_prototypes_steps", -1, "an integer >= 0 (SwAV uses 313; 0 trains them from the start)"),
        ("queue_length", -1, "an integer >= 0 (0 turns the queue off; SwAV uses 3840 with batches of 256)"),
        ("queue_length", True, "an integer >= 0 (0 turns the queue off; SwAV uses 3840 with batches of 256)"),
        ("queue_start_step", -5, "an integer >= 0"),
        ("queue_views", 0, "an integer >= 1 (the number of global views the recipe makes)"),
    ],
)
def test_bad_constructor_arguments(arg, value, message):
    with pytest.raises(ComponentError) as info:
        SwAVLoss(4, **{arg: value})
    why = f": {loss_kit.SATURATES}" if arg == "temperature" else ""  # a temperature's range says what goes wrong
    assert str(info.value) == f"clrun/swav: {arg} must be {message}, got {value!r}{why}"


def test_defaults_are_the_official_ones():
    loss = SwAVLoss(128)
    assert (loss.num_prototypes, loss.temperature, loss.sinkhorn_iterations, loss.epsilon) == (3000, 0.1, 3, 0.05)
    assert (loss.freeze_prototypes_steps, loss.queue_length, loss.queue_start_step, loss.queue_views) == (313, 0, 0, 2)
    assert loss.prototypes.weight.shape == (3000, 128) and loss.prototypes.bias is None
    assert loss.queue.shape == (2, 0, 128)
    assert [name for name, _ in loss.named_parameters()] == ["prototypes.weight"]
