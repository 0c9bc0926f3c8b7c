"""The health metrics' defining properties (Wang & Isola 2020; SimSiam 4.1; RankMe), and each against a
direct float64 NumPy evaluation of its formula."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from clrun.health import alignment, health_metrics, pair_cosines, rankme, std_sqrt_d, uniformity


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_alignment_of_identical_pairs_is_0_and_of_antipodal_pairs_4():
    x = torch.randn(64, 16)
    assert alignment(x, x.clone()) == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, -x) == pytest.approx(4.0, abs=1e-12)
    assert alignment(x, 3.0 * x) == pytest.approx(0.0, abs=1e-12)  # scale is normalized away


def test_alignment_matches_the_formula():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 5)), rng.standard_normal((20, 5))
    want = np.mean(np.sum((unit_rows(x) - unit_rows(y)) ** 2, axis=1))
    assert alignment(torch.tensor(x), torch.tensor(y)) == pytest.approx(want, rel=1e-12)


def test_uniformity_is_at_most_0_and_exactly_0_for_identical_embeddings():
    same = torch.ones(50, 8) * torch.randn(1, 8)
    assert uniformity(same) == 0.0
    for seed in range(5):
        assert uniformity(torch.randn(30, 4, generator=torch.Generator().manual_seed(seed))) < 0.0


def test_uniformity_matches_the_formula_over_distinct_pairs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 3))
    u = unit_rows(x)
    pairs = [np.exp(-2.0 * np.sum((u[i] - u[j]) ** 2)) for i, j in itertools.combinations(range(12), 2)]
    assert uniformity(torch.tensor(x)) == pytest.approx(math.log(np.mean(pairs)), rel=1e-12)


def test_uniformity_of_points_spread_on_a_high_dimensional_sphere_is_near_minus_4():
    # ||u - v||^2 -> 2 for independent directions in high dimension: log exp(-2 * 2) = -4
    assert uniformity(torch.randn(500, 2048, generator=torch.Generator().manual_seed(0))) == pytest.approx(-4.0, abs=0.1)


def test_std_metric_is_about_1_for_isotropic_gaussians_and_0_for_a_constant():
    g = torch.Generator().manual_seed(0)
    assert std_sqrt_d(torch.randn(4096, 128, generator=g)) == pytest.approx(1.0, abs=0.02)
    assert std_sqrt_d(torch.ones(100, 128) * torch.randn(1, 128, generator=g)) == pytest.approx(0.0, abs=1e-12)


def test_std_metric_matches_the_formula():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 6)) + 1.0
    want = np.mean(np.std(unit_rows(x), axis=0, ddof=1)) * math.sqrt(6)
    assert std_sqrt_d(torch.tensor(x)) == pytest.approx(want, rel=1e-12)


def test_rankme_is_about_1_for_rank_1_input():
    g = torch.Generator().manual_seed(0)
    rank1 = torch.randn(200, 1, generator=g) @ torch.randn(1, 64, generator=g)
    assert rankme(rank1) == pytest.approx(1.0, abs=1e-3)


def test_rankme_is_about_d_for_orthogonal_columns_with_equal_singular_values():
    q, _ = torch.linalg.qr(torch.randn(256, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    assert rankme(5.0 * q) == pytest.approx(32.0, rel=1e-4)


def test_rankme_matches_the_formula():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 8)) * np.linspace(0.1, 3.0, 8)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme(torch.tensor(x)) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-10)


def test_pair_cosines_split_positives_from_all_other_pairings():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    positive, negative = pair_cosines(torch.tensor(x), torch.tensor(y))
    cos = unit_rows(x) @ unit_rows(y).T
    np.testing.assert_allclose(positive.numpy(), np.diag(cos), rtol=1e-12)
    assert negative.shape == (30,)
    np.testing.assert_allclose(np.sort(negative.numpy()), np.sort(cos[~np.eye(6, dtype=bool)]), rtol=1e-12)


def test_health_metrics_of_a_collapsed_batch():
    point = torch.randn(1, 16)
    m = health_metrics(point.repeat(32, 1), point.repeat(32, 1))
    assert m["alignment"] == pytest.approx(0.0, abs=1e-12)
    assert m["uniformity"] == 0.0
    assert m["std_sqrt_d"] == pytest.approx(0.0, abs=1e-12)
    assert m["rankme"] == pytest.approx(1.0, abs=1e-3)
    assert m["pos_cosine"] == pytest.approx(1.0) and m["neg_cosine"] == pytest.approx(1.0)
