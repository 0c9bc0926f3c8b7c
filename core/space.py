"""Pictures of the embedding space, recorded for the report: a map of the test features and a retrieval grid.

An evaluator that embeds a labeled test set and a neighbour bank (the kNN evaluator does) records here what
the report then draws (``clrun.report.space_plots``):

* **the map**: a fixed sample of up to ``MAP_POINTS`` test images (the same in every run of a recipe), their
  backbone features reduced by PCA to ``MAP_DIMS`` dimensions (float16) with their labels, once before training
  (``first``, the untrained or initialized encoder) and at every later evaluation (``last``, overwritten). The
  report lays the points out in 2-D, by UMAP where ``umap-learn`` is installed, else by their first two
  principal components. Stored reduced rather than in 2-D so that the layout is the report's choice, and
  small: 3,000 points of 50 values are 300 kB, where 2,048-wide features would be 12 MB.
* **the retrieval grid**: ``QUERIES`` test images, one per class in class order, each with its ``NEIGHBOURS``
  nearest bank images by cosine similarity of the backbone features, as thumbnails (uint8, at most
  ``THUMBNAIL`` pixels a side), their labels and similarities, at the last evaluation.

Everything goes into the run folder's file ``RunFolder.space``, written whole and atomically. A
picture is not worth a failed run or evaluation: a folder that cannot be written gives a warning.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clrun.storage import write_atomic

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from clrun.training.run import Run

MAP_POINTS = 3000
MAP_DIMS = 50
QUERIES = 10  # one per class of a 10-class data set
NEIGHBOURS = 7
THUMBNAIL = 64
SAMPLE_SEED = 2718  # the map's sample of the test set: fixed, whatever the recipe's seed


def map_indices(size: int, points: int = MAP_POINTS) -> Tensor:
    """The test images the map shows: all of a small set, else a fixed random ``points`` of them, in order."""
    if size <= points:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(SAMPLE_SEED))[:points].sort().values


def leading_components(rows: Tensor, k: int) -> Tensor:
    """``(n, min(k, n, width))`` float64: the rows' coordinates on their ``k`` leading principal axes (the rows
    centered, then projected on the top right-singular vectors), in decreasing variance. The token maps'
    colours (``clrun.health.token_maps``) are the first three of a ViT's patch tokens."""
    x = rows.double()
    x = x - x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return x @ vh[:k].T


def principal_components(features: Tensor, dims: int = MAP_DIMS) -> np.ndarray:
    """``leading_components`` of the features as the map keeps them: float16 (the first two columns are the PCA
    map)."""
    return leading_components(features, dims).to(torch.float16).numpy()


def record_start(run: "Run", test: "Dataset", batch_size: int = 512) -> None:
    """The map of the encoder before training (``first``): at a run's first step only (not on a resume, nor in
    ``cl-run eval``), and unless the run folder has one. Embeds only the map's sample of ``test``."""
    if run.folder is None or run.step > 0 or "first_points" in _read(run):
        return
    # A picture must not change the training: the loader's seed draw comes from a forked global generator (the
    # evaluators run on rank 0 only, and a run with the callback would otherwise draw its masks differently).
    with _only_warning(), torch.random.fork_rng(devices=[]):
        sample = torch.utils.data.Subset(test, map_indices(len(test)).tolist())
        features, _, labels = run.features(sample, batch_size, projector=False)
        _write(run, {**_read(run), **_map_entries("first", run, features, labels, test)})


def record(run: "Run", test: "Dataset", test_features: Tensor, test_labels: Tensor,
           bank: Optional["Dataset"] = None, bank_features: Optional[Tensor] = None,
           bank_labels: Optional[Tensor] = None) -> None:
    """The map of ``test_features`` (the whole test set's, in the data set's order) as ``last``, and the
    retrieval grid of ``test``'s queries among ``bank``'s images when a bank is given and can be read by index
    (a streamed data set cannot)."""
    if run.folder is None:
        return
    with _only_warning():
        chosen = map_indices(len(test_features))
        entries = {**_read(run), **_map_entries("last", run, test_features[chosen], test_labels[chosen], test)}
        if bank is not None and bank_features is not None and bank_labels is not None and hasattr(bank, "__getitem__"):
            entries.update(_retrievals(test, test_features, test_labels, bank, bank_features, bank_labels))
        _write(run, entries)


@contextmanager
def _only_warning() -> Iterator[None]:
    """A picture is not worth the run: whatever fails in recording it becomes a warning that names the error."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (reported, not swallowed: the run goes on without the pictures)
        warnings.warn(f"the embedding map and retrieval grid were not saved: {type(exc).__name__}: {exc}",
                      stacklevel=3)


def _map_entries(when: str, run: "Run", features: Tensor, labels: Tensor, test: "Dataset") -> dict[str, np.ndarray]:
    entries = {f"{when}_points": principal_components(features.float()),
               f"{when}_labels": labels.numpy().astype(np.int64), f"{when}_epoch": np.array(run.epoch)}
    names = getattr(test, "classes", None)
    if names:
        entries["class_names"] = np.array([str(c) for c in names])
    return entries


def _retrievals(test: "Dataset", test_features: Tensor, test_labels: Tensor, bank: "Dataset", bank_features: Tensor,
                bank_labels: Tensor) -> dict[str, np.ndarray]:
    return retrieval_grid(test_features, test_labels, lambda i: test[i][0], bank_features, bank_labels,
                          lambda i: bank[i][0])


def retrieval_grid(features: Tensor, labels: Tensor, image: Callable[[int], Tensor], bank_features: Tensor,
                   bank_labels: Tensor, bank_image: Callable[[int], Tensor], same_set: bool = False) -> dict[str, np.ndarray]:
    """The grid's arrays: ``QUERIES`` rows of ``features`` (``one_per_class``) and each one's ``NEIGHBOURS`` nearest
    bank rows by cosine, with their images (``image(i)``, ``bank_image(j)``), labels and similarities.
    ``same_set``: the bank is the queries' own set (``cl-run embed --report``), and a query is not its own
    neighbour."""
    queries = one_per_class(labels)
    own = int(same_set)
    k = min(NEIGHBOURS, len(bank_features) - own)
    similarity, rows = nearest(F.normalize(features[queries].float(), dim=1), bank_features, k + own)
    if same_set:  # each query's own row is among its k + 1 nearest (similarity 1): left out
        others = rows != queries.unsqueeze(1)
        first = others.cumsum(dim=1) <= k
        similarity, rows = similarity[others & first].view(len(queries), k), rows[others & first].view(len(queries), k)
    images = [picture for q, row in zip(queries.tolist(), rows.tolist())
              for picture in [image(q)] + [bank_image(j) for j in row]]
    pictures = thumbnails(images)
    return {"retrieval_images": pictures.reshape(len(queries), -1, *pictures.shape[1:]),
            "retrieval_labels": torch.cat([labels[queries, None], bank_labels[rows]], 1).numpy(),
            "retrieval_similarity": similarity.numpy().astype(np.float32), "retrieval_queries": queries.numpy()}


def one_per_class(labels: Tensor) -> Tensor:
    """The first test image of each class, in class order, ``QUERIES`` of them (repeating classes' later
    images when there are fewer classes)."""
    firsts = [int(torch.nonzero(labels == c)[0]) for c in torch.unique(labels).tolist()]
    chosen = firsts[:QUERIES]
    for index in range(len(labels)):
        if len(chosen) >= min(QUERIES, len(labels)):
            break
        if index not in chosen:
            chosen.append(index)
    return torch.tensor(chosen)


def nearest(query: Tensor, bank: Tensor, k: int, chunk: int = 16384) -> tuple[Tensor, Tensor]:
    """Each query's ``k`` most similar bank rows (cosine), reading the bank ``chunk`` rows at a time."""
    best = torch.full((len(query), k), -torch.inf)
    best_index = torch.zeros((len(query), k), dtype=torch.long)
    for start in range(0, len(bank), chunk):
        sims = query @ F.normalize(bank[start:start + chunk].float(), dim=1).T
        merged = torch.cat([best, sims], dim=1)
        merged_index = torch.cat([best_index, torch.arange(start, start + len(sims.T)).expand(len(query), -1)], 1)
        best, where = merged.topk(k, dim=1)
        best_index = merged_index.gather(1, where)
    return best, best_index


def thumbnails(images: list[Tensor]) -> np.ndarray:
    """``(N, 3, S, S)`` uint8: each image scaled to fit ``S`` (the largest image's longer side, at most
    ``THUMBNAIL``) and placed top-left on black; gray images as three equal channels."""
    pictures = []
    for image in images:
        x = torch.as_tensor(image)
        if x.dtype != torch.uint8:  # a float image in [0, 1]
            x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
        pictures.append(x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3])
    side = min(THUMBNAIL, max(max(x.shape[-2:]) for x in pictures))
    out = np.zeros((len(pictures), 3, side, side), dtype=np.uint8)
    for n, x in enumerate(pictures):
        scale = side / max(x.shape[-2:])
        if scale != 1:
            size = [max(1, round(length * scale)) for length in x.shape[-2:]]
            x = F.interpolate(x[None].float(), size=size, mode="bilinear", antialias=True)[0]
            x = x.round().clamp(0, 255).to(torch.uint8)
        out[n, :, :x.shape[1], :x.shape[2]] = x.numpy()
    return out


def _read(run: "Run") -> dict[str, np.ndarray]:
    path = run.folder.space
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError):
        return {}  # unreadable: written again whole


def _write(run: "Run", entries: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **entries)
    if run.deferred_files is not None:  # cl-run eval writes it where the evaluation goes
        run.deferred_files["space"] = buffer.getvalue()
        return
    write_atomic(run.folder.space, buffer.getvalue(), "embedding space")
