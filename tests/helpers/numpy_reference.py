"""Float64 NumPy helpers shared by the loss tests: central finite differences and a tolerance check.

Nothing here imports torch or clrun: the references built on it stay independent of the code under
test. The test files load this module by path (pytest runs with ``--import-mode=importlib``, so the
tests folder is not on ``sys.path``):

    _spec = importlib.util.spec_from_file_location("numpy_reference", Path(__file__).with_name("numpy_reference.py"))
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np


def central_difference(
    f: Callable[[list[np.ndarray]], float], arrays: Sequence[np.ndarray], h: float = 1e-6
) -> list[np.ndarray]:
    """d f / d arrays[k] for every k, by ``(f(x + h e) - f(x - h e)) / 2h`` entry by entry, in float64."""
    base = [np.array(a, dtype=np.float64) for a in arrays]
    grads = []
    for which in range(len(base)):
        g = np.zeros_like(base[which])
        for idx in np.ndindex(*g.shape):
            plus = [b.copy() for b in base]
            minus = [b.copy() for b in base]
            plus[which][idx] += h
            minus[which][idx] -= h
            g[idx] = (f(plus) - f(minus)) / (2 * h)
        grads.append(g)
    return grads


def assert_close(actual, expected, rtol: float = 1e-10, atol_scale: float | None = None) -> None:
    """``|actual - expected| <= rtol |expected| + atol``, with ``atol = (atol_scale or rtol) * max |expected|``."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max()), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=(atol_scale or rtol) * scale)


def info_nce_row(sims: Sequence[float], positive: int, tau: float) -> tuple[float, bool, float, float]:
    """One anchor's InfoNCE over its cosine similarities ``sims`` to every candidate: the term
    ``-log softmax(sims / tau)[positive]`` (stable log-sum-exp), whether the positive has the largest
    similarity, its similarity, and the mean similarity of the other candidates."""
    top = max(sims)
    lse = top / tau + math.log(sum(math.exp((s - top) / tau) for s in sims))
    others = [s for m, s in enumerate(sims) if m != positive]
    return lse - sims[positive] / tau, int(np.argmax(sims)) == positive, sims[positive], sum(others) / len(others)


def assert_metrics_match(result, reference: dict[str, float], counts: Sequence[str] = ("contrastive_acc",)) -> None:
    """Every metric of ``reference`` against ``result[name].item()`` (a loss's output dict): the ``counts``
    (fractions of hits) to 1e-12, the rest with ``assert_close``; ``result`` has exactly those keys."""
    assert set(result) == set(reference), (sorted(result), sorted(reference))
    for name, want in reference.items():
        got = float(result[name].item())
        if name in counts:
            assert abs(got - want) <= 1e-12, (name, got, want)
        else:
            assert_close(got, want)
