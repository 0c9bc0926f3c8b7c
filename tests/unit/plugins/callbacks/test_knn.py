"""Weighted kNN (Wu et al. 2018): against a direct NumPy evaluation of its vote, and its accuracy on
synthetic sets whose answer is known; the chunked search gives the whole-matrix computation's predictions
on the full Fashion-MNIST bank, reads the bank a chunk at a time, and never upcasts a half bank whole."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tests.helpers.knn_reference import whole_matrix_knn
from clrun import ComponentError, DataNotFoundError
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
    want = numpy_knn(bank.double().numpy(), labels.numpy(), queries.double().numpy(), 4, k, t)
    for bank_chunk in (11, 16384):  # bank chunks that do not divide (and smaller than k), and one for all
        got = knn_predict(bank, labels, queries, 4, k=k, temperature=t, chunk=7, bank_chunk=bank_chunk)
        np.testing.assert_array_equal(got.numpy(), want)


def test_the_chunked_search_predicts_as_the_whole_matrix_on_the_full_fashion_mnist_bank():
    """Features of a random one-layer network (784 -> 64, ReLU) of all 60k training images as the bank; the
    first 5k test images as queries (all 10k: bench/eval_memory.py, identical too). Fashion-MNIST has
    duplicate images, so exact ties occur."""
    from clrun.plugins.datasets.fashion_mnist import FashionMNIST

    try:
        train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    weights = torch.randn(784, 64, generator=torch.Generator().manual_seed(0))
    bank, queries = (torch.relu(d.images[:n].flatten(1).float() @ weights) for d, n in ((train, None), (test, 5000)))
    want = whole_matrix_knn(bank, train.targets, queries, 10)
    got = knn_predict(bank, train.targets, queries, 10)  # the default chunks: 4 bank chunks, 5 query chunks
    assert torch.equal(got, want)
    assert (got == test.targets[:5000]).float().mean().item() > 0.7  # 0.79: not a degenerate bank


class Made(TorchFunctionMode):
    """Records the dtype and shape of every tensor a torch function returns, and the rows of what is
    normalized (the bank's and the queries' chunks)."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[tuple[torch.dtype, tuple[int, ...]]] = []
        self.normalized: list[tuple[torch.dtype, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.normalize:
            self.normalized.append((args[0].dtype, args[0].shape[0]))
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                self.outputs.append((t.dtype, tuple(t.shape)))
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_bank_is_read_in_chunks_and_never_copied_whole(dtype):
    n, d, chunk, bank_chunk = 5000, 16, 100, 512
    bank, labels = blobs(n // 5, 5, d, 1.0, seed=5)
    bank = bank.to(dtype)
    queries, _ = blobs(60, 5, d, 1.0, seed=6)
    with Made() as made:
        knn_predict(bank, labels, queries.to(dtype), 5, k=20, chunk=chunk, bank_chunk=bank_chunk)
    # The chunks are upcast to fp32 one at a time and normalized there, at most bank_chunk (queries: chunk) rows.
    bank_chunks = [rows for kind, rows in made.normalized if rows > chunk]
    assert sum(bank_chunks) == n and max(bank_chunks) == bank_chunk
    assert {kind for kind, _ in made.normalized} == {torch.float32} and bank.dtype == dtype
    # Nothing as large as the bank is made: no fp32 copy, no normalized copy, no M x N similarities.
    largest = max(math.prod(shape) for _, shape in made.outputs)
    assert largest == chunk * bank_chunk < n * d


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
