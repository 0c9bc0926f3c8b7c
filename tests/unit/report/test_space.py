"""The pictures of the embedding space (``clrun.space`` records, ``clrun.report.space_plots`` draws): the map's
fixed sample and principal components against NumPy, the retrieval grid's neighbours against a brute-force
cosine search, what a resumed run keeps, and the report's two figures."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clrun import space
from clrun.report import write_report
from clrun.report.records import read_run
from clrun.report.space_plots import embedding_map_figure, layout_2d, retrieval_figure
from clrun.run_folder import RunFolder

CLASSES = ["zero", "one", "two"]


class Labeled(torch.utils.data.Dataset):
    """``n`` gray 12 x 10 uint8 images whose pixels encode their index, labels ``i % 3``, named classes."""

    classes = CLASSES

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((1, 12, 10), i % 256, dtype=torch.uint8), i % 3


def fake_run(folder, features: dict, epoch: int = 0, step: int = 0):
    """What ``clrun.space`` reads of a run: its folder, epoch and step, and ``features`` (of a Subset's rows)."""
    def embed(dataset, batch_size, projector=None):
        rows = torch.tensor(dataset.indices)
        return features["test"][rows], None, torch.tensor([dataset[i][1] for i in range(len(dataset))])

    return SimpleNamespace(folder=RunFolder(folder), epoch=epoch, step=step, features=embed, deferred_files=None)


def test_the_map_sample_is_fixed_and_sorted():
    a, b = space.map_indices(10_000), space.map_indices(10_000)
    assert torch.equal(a, b) and len(a) == space.MAP_POINTS and torch.equal(a, a.sort().values)
    assert len(a.unique()) == len(a)
    assert torch.equal(space.map_indices(100), torch.arange(100))


def test_principal_components_are_numpys():
    x = torch.randn(200, 80, generator=torch.Generator().manual_seed(0)) * torch.linspace(3, 0.1, 80)
    ours = space.principal_components(x)
    centered = x.double().numpy() - x.double().numpy().mean(0)
    _, _, vh = np.linalg.svd(centered, full_matrices=False)
    expected = centered @ vh[:50].T
    signs = np.sign((ours.astype(np.float64) * expected).sum(0))  # an axis's sign is arbitrary
    assert ours.dtype == np.float16 and ours.shape == (200, 50)
    np.testing.assert_allclose(ours * signs, expected, rtol=2e-3, atol=2e-3)
    variances = expected.var(0)
    assert np.all(np.diff(variances) <= 1e-9)  # the first columns are the widest: the PCA map


def test_the_retrieval_grid_holds_each_querys_nearest_bank_images(tmp_path):
    generator = torch.Generator().manual_seed(1)
    test, bank = Labeled(30), Labeled(200)
    test_f, bank_f = torch.randn(30, 16, generator=generator), torch.randn(200, 16, generator=generator)
    test_y, bank_y = torch.arange(30) % 3, torch.arange(200) % 3
    run = fake_run(tmp_path, {"test": test_f})
    space.record(run, test, test_f, test_y, bank, bank_f, bank_y)
    saved = read_run(tmp_path).space
    queries = saved["retrieval_queries"]
    assert queries.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # one per class first, then the next images
    cosine = torch.nn.functional.normalize(test_f, dim=1) @ torch.nn.functional.normalize(bank_f, dim=1).T
    for row, q in enumerate(queries):
        top = cosine[q].topk(space.NEIGHBOURS)
        np.testing.assert_allclose(saved["retrieval_similarity"][row], top.values.numpy(), rtol=1e-6)
        assert saved["retrieval_labels"][row].tolist() == [int(test_y[q])] + bank_y[top.indices].tolist()
        pixels = saved["retrieval_images"][row, :, 0, 0, 0].tolist()  # the pixel value is the image's index
        assert pixels == [int(q)] + top.indices.tolist()
    assert saved["retrieval_images"].shape == (space.QUERIES, 1 + space.NEIGHBOURS, 3, 12, 12)  # letterboxed, 3 channels
    assert saved["last_points"].shape == (30, 16) and saved["last_labels"].tolist() == test_y.tolist()
    assert saved["class_names"].tolist() == CLASSES and int(saved["last_epoch"]) == 0


def test_the_first_map_is_kept_by_a_resumed_run_and_the_last_one_moves(tmp_path):
    features = {"test": torch.randn(40, 8, generator=torch.Generator().manual_seed(2))}
    run = fake_run(tmp_path, features, epoch=0)

    def drawing_features(dataset, *args, **kwargs):
        torch.rand(1)  # as a data loader draws its seed from the global stream
        rows = torch.tensor(dataset.indices)
        return features["test"][rows], None, rows % 3

    run.features = drawing_features
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    space.record_start(run, Labeled(40))
    assert torch.equal(torch.rand(1), expected)  # the picture left training's random stream as it was
    first = read_run(tmp_path).space["first_points"].copy()
    features["test"] = features["test"] * 2 + 1  # the encoder trained on
    space.record_start(fake_run(tmp_path, features, epoch=3, step=12), Labeled(40))  # a resume: no new first map
    space.record(fake_run(tmp_path, features, epoch=5), Labeled(40), features["test"], torch.arange(40) % 3)
    saved = read_run(tmp_path).space
    assert np.array_equal(saved["first_points"], first) and int(saved["first_epoch"]) == 0
    assert int(saved["last_epoch"]) == 5 and not np.array_equal(saved["last_points"], first)
    assert "retrieval_images" not in saved  # no bank given
    trained = tmp_path / "evaluated"  # cl-run eval, or a run resumed from a folder without a map: no "before"
    space.record_start(fake_run(trained, features, epoch=5, step=20), Labeled(40))
    assert not RunFolder(trained).space.exists()


def test_a_failure_to_record_is_a_warning_not_a_failed_run(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the run folder should be")
    run = fake_run(blocked, {"test": torch.randn(4, 2)})
    with pytest.warns(UserWarning, match="the embedding map and retrieval grid were not saved"):
        space.record(run, Labeled(4), torch.randn(4, 2), torch.arange(4) % 3)


def test_the_report_draws_the_map_and_the_grid(tmp_path):
    (tmp_path / "recipe.yaml").write_text("seed: 0\n")
    generator = torch.Generator().manual_seed(3)
    features = {"test": torch.randn(60, 8, generator=generator)}
    space.record_start(fake_run(tmp_path, features), Labeled(60))
    bank_f = torch.randn(100, 8, generator=generator)
    space.record(fake_run(tmp_path, features, epoch=2), Labeled(60), features["test"], torch.arange(60) % 3,
                 Labeled(100), bank_f, torch.arange(100) % 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = write_report(tmp_path).read_text(encoding="utf-8")
    for name, heading in (("embedding_map", "Embedding map"), ("retrievals", "Nearest neighbours")):
        assert f"### {heading}" in report and f"(plots/{name}.png)" in report
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 5_000
    map_figure = embedding_map_figure(read_run(tmp_path).space)
    titles = [ax.get_title() for ax in map_figure.axes]
    assert titles == ["before training (epoch 0): 60 test images, PCA", "last evaluation (epoch 2): 60 test images, PCA"]
    grid = retrieval_figure(read_run(tmp_path).space)
    assert len(grid.axes) == space.QUERIES * (1 + space.NEIGHBOURS)
    marked = [ax.get_title() for ax in grid.axes if ax.get_title().startswith("✗")]
    saved = read_run(tmp_path).space["retrieval_labels"]
    assert len(marked) == int((saved[:, 1:] != saved[:, :1]).sum())  # every wrong-class neighbour, no other


def test_without_umap_the_layout_is_the_first_two_components(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    points = np.arange(12, dtype=np.float16).reshape(4, 3)
    xy, method = layout_2d(points)
    assert method == "PCA" and np.array_equal(xy, points[:, :2].astype(np.float32))
    assert embedding_map_figure(None) is None and retrieval_figure({}) is None
