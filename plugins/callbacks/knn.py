"""Weighted k-nearest-neighbour evaluation of the encoder (Wu et al. 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination"; the monitor solo-learn and LightlySSL use)."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

import clrun
from clrun import Nested, Range, Run, UserError, checked
from clrun.callback import Evaluator
from clrun.plugins.callbacks.class_lists import check_same_classes


# Chunk sizes: a query chunk times a bank chunk of fp32 similarities is what one step of the search holds
# (64 MiB on the CPU; 1 GiB on an accelerator, where bigger matmuls keep it busy).
CPU_CHUNKS = (1024, 16384)
ACCELERATOR_CHUNKS = (4096, 65536)


def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024, bank_chunk: int = 16384,
                device: torch.device | str | None = None) -> Tensor:
    """Class predictions (on the CPU) for ``test_x`` (M, D) from labeled ``train_x`` (N, D), the bank.

    Cosine similarity; each of the k nearest neighbours votes for its class with weight exp(s / T).

    Computed on ``device`` (default: where ``train_x`` is) in pieces, so that the similarity matrix is never
    M x N: the bank is read once, ``bank_chunk`` rows at a time, each piece converted to fp32 and normalized
    there (a half-precision bank never exists in fp32 whole, nor does a normalized copy of it); against each
    piece, the queries in chunks of ``chunk`` rows, keeping a running top-k per query. The arithmetic is
    fp32 whatever the bank's dtype: bf16 similarities have 3 significant digits and would turn neighbours
    into ties (and the CPU emulates bf16 matmuls). Over an fp32 bank the predictions are those of the
    whole-matrix computation (tested on Fashion-MNIST); a bf16 bank rounds the features, so near-ties may
    reorder (docs/guides/evaluation.md gives the agreement measured).
    """
    device = torch.device(device) if device is not None else train_x.device
    n, m = len(train_x), len(test_x)
    k = min(k, n)
    # Each query's k best so far: similarities (descending) and their rows in the bank.
    best = torch.full((m, k), -torch.inf, device=device)
    best_index = torch.zeros((m, k), dtype=torch.long, device=device)
    queries = test_x.to(device)  # in its own dtype; each chunk is normalized in fp32 when it is used
    for b0 in range(0, n, bank_chunk):
        bank = F.normalize(train_x[b0:b0 + bank_chunk].to(device).float(), dim=1)
        for q0 in range(0, m, chunk):
            sims = F.normalize(queries[q0:q0 + chunk].float(), dim=1) @ bank.T
            top, index = sims.topk(min(k, len(bank)), dim=1)
            merged = torch.cat([best[q0:q0 + chunk], top], dim=1)
            merged_index = torch.cat([best_index[q0:q0 + chunk], index + b0], dim=1)
            top, where = merged.topk(k, dim=1)
            best[q0:q0 + chunk], best_index[q0:q0 + chunk] = top, merged_index.gather(1, where)
    labels = train_y.to(device)
    predictions = []
    for q0 in range(0, m, chunk):
        votes = torch.zeros(len(best[q0:q0 + chunk]), num_classes, device=device)
        votes.scatter_add_(1, labels[best_index[q0:q0 + chunk]], (best[q0:q0 + chunk] / temperature).exp())
        predictions.append(votes.argmax(dim=1).cpu())
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


def chunks_for(device: torch.device) -> tuple[int, int]:
    """(query chunk, bank chunk) for a search on ``device``."""
    return CPU_CHUNKS if device.type == "cpu" else ACCELERATOR_CHUNKS


@checked
class KNNEvaluation(Evaluator):
    """kNN top-1 of the backbone's features (``knn_top1``) and, side by side, of the projector's outputs
    (``knn_top1_projector``, where the projector is embedded): what users keep is the backbone, the
    projector is scaffolding.

    The bank is kept in ``features_dtype`` (default: fp32 on the CPU, bf16 on an accelerator) and searched
    in chunks on the run's device (``knn_predict``): its memory is the bank's, in that dtype, plus a few
    chunks.

    train:     labeled data set used as the neighbour bank (e.g. the training split, without augmentation)
    test:      labeled data set to classify (e.g. the official test split, never trained on)
    every:     also evaluate every this many epochs (0: only at the end of the run)
    projector: also evaluate the projector's outputs: auto (where the projector is at most 2048 wide),
               true or false
    features_dtype: what the embedded features are kept in: auto (fp32 on the CPU, bf16 on an
               accelerator), fp32, bf16 or fp16
    space:     record the report's pictures of the embedding space (``clrun.space``): a map of a fixed
               sample of the test features before training (embedding those few thousand images at the
               run's start) and at each evaluation, and a retrieval grid of test images' nearest bank images
    """

    def __init__(
        self,
        train: Annotated[Dataset, Nested("dataset")],
        test: Annotated[Dataset, Nested("dataset")],
        k: Annotated[int, Range(min=1, hint="Wu et al. and DINO use 20 or 200")] = 20,
        temperature: Annotated[float, Range(min=0, exclusive_min=True, hint="Wu et al. use 0.07")] = 0.07,
        every: Annotated[int, Range(min=0, hint="0: only at the end of the run")] = 0,
        batch_size: Annotated[int, Range(min=1)] = 512,
        projector: Literal["auto", True, False] = "auto",
        features_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
        space: bool = True,
    ) -> None:
        check_same_classes("clrun/knn", train, test)
        self.train, self.test = train, test
        self.k, self.temperature, self.every, self.batch_size = k, temperature, every, batch_size
        self.projector, self.features_dtype, self.space = projector, features_dtype, space

    def clrun_run_start(self, run: Run) -> None:
        if self.space:
            clrun.space.record_start(run, self.test, self.batch_size)

    def evaluate(self, run: Run) -> dict[str, float]:
        options = {"projector": self.projector, "dtype": self.features_dtype}
        bank_f, bank_p, bank_y = run.features(self.train, self.batch_size, **options)
        test_f, test_p, test_y = run.features(self.test, self.batch_size, **options)
        if (bank_y < 0).any() or (test_y < 0).any():
            raise UserError("clrun/knn needs labeled train and test data sets (some labels are -1, i.e. unlabeled)")
        num_classes = int(torch.cat([bank_y, test_y]).max()) + 1
        chunk, bank_chunk = chunks_for(run.device)
        accuracy = {}
        for key, bank, test in (("knn_top1", bank_f, test_f), ("knn_top1_projector", bank_p, test_p)):
            if bank is None:  # the projector was not embedded (a wide one): nothing to report for it
                continue
            pred = knn_predict(bank, bank_y, test, num_classes, self.k, self.temperature, chunk=chunk,
                               bank_chunk=bank_chunk, device=run.device)
            accuracy[key] = (pred == test_y).float().mean().item()
        if self.space:
            clrun.space.record(run, self.test, test_f, test_y, self.train, bank_f, bank_y)
        return accuracy

    def describe(self, accuracy: dict[str, float]) -> str:
        projector = (f", {100 * accuracy['knn_top1_projector']:.2f}% (projector outputs)"
                     if "knn_top1_projector" in accuracy else "")
        return (
            f"kNN top-1 (k={self.k}) on {len(self.test)} test images: {100 * accuracy['knn_top1']:.2f}% "
            f"(backbone features){projector}; neighbour bank: {len(self.train)} images"
        )
