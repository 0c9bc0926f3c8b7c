"""Weighted k-nearest-neighbour evaluation of the encoder (Wu et al. 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination"; the monitor solo-learn and LightlySSL use)."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from clrun import Nested, Range, Run, UserError, checked
from clrun.callback import Evaluator
from clrun.plugins.callbacks.class_lists import check_same_classes


def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """Class predictions for ``test_x`` (M, D) from labeled ``train_x`` (N, D).

    Cosine similarity; each of the k nearest neighbours votes for its class with weight exp(s / T).
    """
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    k = min(k, train_x.shape[0])
    predictions = []
    for start in range(0, test_x.shape[0], chunk):
        sims = test_x[start:start + chunk] @ train_x.T
        top_sims, top_idx = sims.topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes)
        votes.scatter_add_(1, train_y[top_idx], (top_sims / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


@checked
class KNNEvaluation(Evaluator):
    """kNN top-1 of the backbone's features (``knn_top1``) and, side by side, of the projector's outputs
    (``knn_top1_projector``): what users keep is the backbone, the projector is scaffolding.

    train:  labeled data set used as the neighbour bank (e.g. the training split, without augmentation)
    test:   labeled data set to classify (e.g. the official test split, never trained on)
    every:  also evaluate every this many epochs (0: only at the end of the run)
    """

    def __init__(
        self,
        train: Annotated[Dataset, Nested("dataset")],
        test: Annotated[Dataset, Nested("dataset")],
        k: Annotated[int, Range(min=1, hint="Wu et al. and DINO use 20 or 200")] = 20,
        temperature: Annotated[float, Range(min=0, exclusive_min=True, hint="Wu et al. use 0.07")] = 0.07,
        every: Annotated[int, Range(min=0, hint="0: only at the end of the run")] = 0,
        batch_size: Annotated[int, Range(min=1)] = 512,
    ) -> None:
        check_same_classes("clrun/knn", train, test)
        self.train, self.test = train, test
        self.k, self.temperature, self.every, self.batch_size = k, temperature, every, batch_size

    def evaluate(self, run: Run) -> dict[str, float]:
        bank_f, bank_p, bank_y = run.features(self.train, self.batch_size)
        test_f, test_p, test_y = run.features(self.test, self.batch_size)
        if (bank_y < 0).any() or (test_y < 0).any():
            raise UserError("clrun/knn needs labeled train and test data sets (some labels are -1, i.e. unlabeled)")
        num_classes = int(torch.cat([bank_y, test_y]).max()) + 1
        accuracy = {}
        for key, bank, test in (("knn_top1", bank_f, test_f), ("knn_top1_projector", bank_p, test_p)):
            pred = knn_predict(bank, bank_y, test, num_classes, self.k, self.temperature)
            accuracy[key] = (pred == test_y).float().mean().item()
        return accuracy

    def describe(self, accuracy: dict[str, float]) -> str:
        return (
            f"kNN top-1 (k={self.k}) on {len(self.test)} test images: {100 * accuracy['knn_top1']:.2f}% "
            f"(backbone features), {100 * accuracy['knn_top1_projector']:.2f}% (projector outputs); "
            f"neighbour bank: {len(self.train)} images"
        )
