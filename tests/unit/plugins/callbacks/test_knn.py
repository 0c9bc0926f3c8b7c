"""Weighted kNN (Wu et al. 2018): against a direct NumPy evaluation of its vote, and its accuracy on
synthetic sets whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clrun import ComponentError
from clrun.plugins.callbacks.knn import KNNEvaluation, knn_predict


def numpy_knn(bank: np.ndarray, labels: np.ndarray, queries: np.ndarray, classes: int, k: int, t: float) -> np.ndarray:
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = []
    for q in queries:
        sims = bank @ (q / np.linalg.norm(q))
        votes = np.zeros(classes)
        for i in np.argsort(-sims, kind="stable")[:k]:
            votes[labels[i]] += math.exp(sims[i] / t)
        out.append(int(np.argmax(votes)))
    return np.array(out)


def blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3.0
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centers[y] + spread * torch.randn(len(y), dim, generator=g), y


@pytest.mark.parametrize("k,t", [(1, 0.07), (5, 0.1), (20, 0.5)])
def test_predictions_match_numpy(k, t):
    bank, labels = blobs(30, 4, 8, 2.5, seed=0)
    queries, _ = blobs(10, 4, 8, 2.5, seed=1)
    got = knn_predict(bank, labels, queries, 4, k=k, temperature=t, chunk=7)  # chunks that do not divide
    want = numpy_knn(bank.double().numpy(), labels.numpy(), queries.double().numpy(), 4, k, t)
    np.testing.assert_array_equal(got.numpy(), want)


def test_separable_classes_are_classified_perfectly():
    bank, labels = blobs(100, 5, 16, 0.3, seed=2)
    test, truth = blobs(50, 5, 16, 0.3, seed=3)
    assert (knn_predict(bank, labels, test, 5, k=20) == truth).float().mean().item() == 1.0


def test_accuracy_on_overlapping_classes_is_near_the_bayes_rate():
    # two unit-variance Gaussians at +-mu along one axis, with a large offset on another so cosine
    # similarity orders neighbours like Euclidean distance; the Bayes accuracy is Phi(mu)
    mu, n, g = 0.5, 4000, torch.Generator().manual_seed(4)

    def sample(count):
        y = torch.arange(count) % 2
        x = torch.randn(count, 2, generator=g)
        x[:, 0] += torch.where(y == 1, mu, -mu)
        x[:, 1] = 100.0
        return x, y

    bank, labels = sample(n)
    test, truth = sample(2000)
    bayes = 0.5 * (1 + math.erf(mu / math.sqrt(2)))  # 0.691
    accuracy = (knn_predict(bank, labels, test, 2, k=200, temperature=1.0) == truth).float().mean().item()
    assert accuracy == pytest.approx(bayes, abs=0.04)


def test_bad_arguments_are_named():
    with pytest.raises(ComponentError, match=r"^clrun/knn: k must be an integer >= 1 \(Wu et al. and DINO use 20 or 200\), "
                                             r"got 0$") as info:
        KNNEvaluation(train=None, test=None, k=0, temperature=0.1)
    assert info.value.argument == "k"
