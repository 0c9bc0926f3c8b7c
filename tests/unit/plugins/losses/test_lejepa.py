"""clrun/lejepa against an independent float64 NumPy implementation of the LeJEPA paper's formula.

Reference: Balestriero and LeCun (2025), "LeJEPA" (arXiv:2511.08544). With z_v the projections of view
v, c the mean of the global views' projections and a_k the step's random unit directions:

    invariance = mean_{v, n, d} (c - z_v)^2
    T_{v,k}    = N integral_{-t_max}^{t_max} |ecf(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt,
                 ecf(t) = mean_n exp(i t z_{v,n} . a_k)
    loss       = (1 - lambd) invariance + lambd mean_{v,k} T_{v,k}

The reference evaluates the characteristic function with complex exponentials and integrates by the
trapezoid rule on the symmetric grid over [-t_max, t_max] (the paper's listing); the module integrates
over [0, t_max] with doubled weights, which is the same sum for an even integrand. Gradients are
central finite differences. The cross-rank version is tests/helpers/ddp_worker.py's.
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


def epps_pulley(x: np.ndarray, t_max: float, knots: int) -> float:
    """N times the Gaussian-weighted squared distance of x's characteristic function to N(0, 1)'s."""
    t = np.linspace(-t_max, t_max, 2 * knots - 1)
    ecf = np.exp(1j * np.outer(t, x)).mean(axis=1)
    integrand = np.abs(ecf - np.exp(-t**2 / 2)) ** 2 * np.exp(-t**2 / 2)
    return len(x) * float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(t)))


def numpy_lejepa(views: list[np.ndarray], is_global: list[bool], directions: np.ndarray, lambd: float,
                 t_max: float = 3.0, knots: int = 17) -> dict[str, float]:
    z = np.stack(views)
    center = z[[i for i, g in enumerate(is_global) if g]].mean(axis=0)
    invariance = float(np.mean((center[None] - z) ** 2))
    stats = [epps_pulley(z[v] @ directions[:, k], t_max, knots) for v in range(len(views)) for k in range(directions.shape[1])]
    sigreg = sum(stats) / len(stats)
    return {"loss": (1 - lambd) * invariance + lambd * sigreg, "invariance": invariance, "sigreg": sigreg}


def run_module(loss, views, is_global, step=0):
    z = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in views]
    res = loss(step_outputs(z, is_global, step=step))
    res["loss"].backward()
    return res, [t.grad.numpy() for t in z]


CASES = [
    ({"lambd": 0.05, "num_slices": 6}, [True, True], 0),
    ({"lambd": 0.5, "num_slices": 4, "knots": 9, "t_max": 2.0}, [True, True], 3),
    ({"lambd": 0.2, "num_slices": 5}, [True, True, False], 7),  # a local view: in the invariance, not the center
    ({"lambd": 0.3, "num_slices": 3}, [True, False, False], 1),
]


@pytest.mark.parametrize("args,is_global,step", CASES)
@pytest.mark.parametrize("n,d", [(5, 4), (2, 3)])
def test_loss_metrics_and_gradients_match_numpy(args, is_global, step, n, d):
    rng = np.random.default_rng(n * 10 + d + step)
    views = [rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0) + rng.uniform(-1, 1) for _ in is_global]
    loss = clrun.create("loss", "clrun/lejepa", **args)
    directions = loss.sigreg.directions(d, step, torch.float64, torch.device("cpu")).numpy()
    t_max, knots = args.get("t_max", 3.0), args.get("knots", 17)
    res, grads = run_module(loss, views, is_global, step)
    assert res["loss"].dtype == torch.float64
    numpy_reference.assert_metrics_match(res, numpy_lejepa(views, is_global, directions, args["lambd"], t_max, knots), counts=())
    expected = numpy_reference.central_difference(
        lambda v: numpy_lejepa(v, is_global, directions, args["lambd"], t_max, knots)["loss"], views)
    for got, want in zip(grads, expected):
        numpy_reference.assert_close(got, want, rtol=1e-6)


def test_directions_are_unit_vectors_fixed_by_the_step():
    sigreg = clrun.create("loss", "clrun/lejepa").sigreg
    a = sigreg.directions(64, 5, torch.float64, torch.device("cpu"))
    assert a.shape == (64, 1024)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(1024, dtype=torch.float64))
    assert torch.equal(a, sigreg.directions(64, 5, torch.float64, torch.device("cpu")))  # every rank, every resume
    assert not torch.allclose(a, sigreg.directions(64, 6, torch.float64, torch.device("cpu")))  # new each step
    # Spread over the sphere: the mean direction is near 0 (|mean| ~ 1/sqrt(1024) for uniform directions).
    assert a.mean(dim=1).norm() < 3 / math.sqrt(1024)


def test_sigreg_is_small_for_gaussian_embeddings_and_grows_with_the_batch_when_they_collapse():
    loss = clrun.create("loss", "clrun/lejepa", num_slices=256)
    g = torch.Generator().manual_seed(0)
    stats = {}
    for n in (256, 1024):
        gaussian = [torch.randn(n, 32, generator=g) for _ in range(2)]
        squeezed = [torch.randn(n, 32, generator=g) * 0.1 for _ in range(2)]  # a near-collapse: variance 0.01
        stats[n] = [loss(step_outputs(v))["sigreg"].item() for v in (gaussian, squeezed)]
    # An isotropic Gaussian's statistic has the expectation int (1 - e^{-t^2}) e^{-t^2/2} dt over [-3, 3]
    # = 1.05 at any batch size (E |ecf - phi|^2 = (1 - phi^2) / N); the squeezed one grows like N.
    assert 0.8 < stats[256][0] < 1.3 and 0.8 < stats[1024][0] < 1.3
    assert stats[256][1] > 50 and stats[1024][1] / stats[256][1] == pytest.approx(4, rel=0.05)


def test_the_center_is_the_global_views_mean_only():
    base = np.zeros((3, 2))
    views = [base + 1.0, base + 3.0, base + 10.0]  # center 2 (the globals); the local view is 8 away
    res, _ = run_module(clrun.create("loss", "clrun/lejepa", num_slices=2), views, [True, True, False])
    assert res["invariance"].item() == pytest.approx((1 + 1 + 64) / 3)


def test_defaults_are_the_papers():
    loss = clrun.create("loss", "clrun/lejepa")
    assert loss.lambd == 0.05 and loss.sigreg.num_slices == 1024
    assert len(loss.sigreg.t) == 17 and loss.sigreg.t[-1].item() == 3.0
    assert loss.state_dict() == {}  # the quadrature is rebuilt from the arguments, not checkpointed


@pytest.mark.parametrize("args,message", [
    ({"lambd": 1.0}, "clrun.create('loss', 'clrun/lejepa'): lambd: must be a number > 0 and < 1 (the paper uses 0.05), "
                     "got 1.0"),
    ({"lambd": 0}, "clrun.create('loss', 'clrun/lejepa'): lambd: must be a number > 0 and < 1 (the paper uses 0.05), "
                   "got 0.0"),
    ({"knots": 16}, "clrun/lejepa: knots must be odd (the authors use 17), got 16"),  # a check no Range can declare
    ({"num_slices": 0}, "clrun.create('loss', 'clrun/lejepa'): num_slices: must be an integer >= 1 (the authors use "
                        "1024), got 0"),
])
def test_bad_arguments_are_refused_with_the_fix(args, message):
    with pytest.raises(ComponentError) as info:
        clrun.create("loss", "clrun/lejepa", **args)
    assert str(info.value) == message


@pytest.mark.parametrize("views,is_global,message", [
    (1, [True], "clrun/lejepa compares at least 2 views of every image; the recipe makes 1. "
                "Use a view section with count 2 or more."),
    (2, [False, False], "clrun/lejepa compares at least 1 global views; the recipe makes 0. "
                        "Use a global view section with count 1 (a section without `local: true`)."),
])
def test_view_layouts_it_cannot_use_are_refused(views, is_global, message):
    with pytest.raises(ComponentError) as info:
        clrun.create("loss", "clrun/lejepa")(step_outputs([torch.randn(4, 3)] * views, is_global))
    assert str(info.value) == message


def test_a_batch_of_one_image_is_refused():
    with pytest.raises(ComponentError, match=r"^clrun/lejepa needs at least 2 images per batch to measure how "
                                             r"Gaussian the embeddings are; got batch size 1\."):
        clrun.create("loss", "clrun/lejepa")(step_outputs([torch.randn(1, 3)] * 2))
