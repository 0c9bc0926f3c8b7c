"""Offline linear evaluation of the frozen encoder: the linear evaluation protocol of self-supervised
learning (Kolesnikov et al. 2019, "Revisiting Self-Supervised Visual Representation Learning"; Chen et al.
2020, SimCLR, appendix B.5): a linear classifier trained on the frozen encoder's features of a labeled
training set, its top-1 accuracy measured on a held-out test set."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from clrun import Nested, Range, Run, UserError, checked
from clrun.callback import Evaluator
from clrun.plugins.callbacks.class_lists import check_same_classes
from clrun.plugins.callbacks.linear import Standardize, accuracy, train_linear_classifier

NAME = "clrun/linear_probe"


def labeled_features(name: str, run: Run, train: Dataset, test: Dataset, batch_size: int,
                     **options: Any) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], int]:
    """(train features, projections, labels), the same for ``test``, and the number of classes; raises
    UserError when a label is -1 (unlabeled). No draw from torch's global random generator. ``options``
    go to ``Run.features`` (``projector``, ``dtype``); projections are None where not embedded."""
    with torch.random.fork_rng(devices=[]):  # belt and braces: embedding must not move the training's streams
        train_out = run.features(train, batch_size, **options)
        test_out = run.features(test, batch_size, **options)
    train_y, test_y = train_out[2], test_out[2]
    if len(train_y) == 0 or len(test_y) == 0:
        raise UserError(f"{name} needs non-empty train and test data sets (train has {len(train_y)} images, "
                        f"test {len(test_y)})")
    if (train_y < 0).any() or (test_y < 0).any():
        raise UserError(f"{name} needs labeled train and test data sets (some labels are -1, i.e. unlabeled)")
    num_classes = int(torch.cat([train_y, test_y]).max()) + 1
    return train_out, test_out, num_classes


@checked
class LinearProbe(Evaluator):
    """Linear evaluation on frozen features: a linear classifier (multinomial logistic regression) trained
    on the ``train`` set's backbone features, top-1 accuracy on the ``test`` set (``linear_top1``), and,
    side by side, the same on the projector's outputs (``linear_top1_projector``, where the projector is
    embedded).

    Features are computed once, in eval mode and without augmentation (``Run.features``), kept in
    ``features_dtype`` (bf16 on an accelerator: each mini-batch is upcast to fp32 as it is used), and
    standardized with the train set's per-feature mean and standard deviation, so that the same
    learning rate suits every run whatever its features' scale (Kornblith et al. 2019 standardize too).
    The classifier starts from zero weights and trains with AdamW on mini-batches under a cosine
    schedule; as the features are precomputed, its epochs are cheap. Everything random (the batch order)
    comes from a private generator seeded with ``seed``: evaluating twice gives the same numbers, and an
    evaluation in mid-training never changes the training's random streams.

    train:        labeled data set the classifier is trained on (e.g. the training split, without augmentation)
    test:         labeled data set it is measured on (e.g. the official test split, never trained on)
    epochs:       passes over the train set's features
    lr:           AdamW peak learning rate (annealed to 0 by a cosine schedule)
    weight_decay: AdamW (decoupled) weight decay
    batch_size:   mini-batch size of the classifier's training
    seed:         seed of the batch order
    every:        also evaluate every this many epochs of pre-training (0: only at the end of the run)
    embed_batch_size: batch size for computing the features with the encoder
    projector:    also evaluate the projector's outputs: auto (where the projector is at most 2048 wide),
                  true or false
    features_dtype: what the embedded features are kept in: auto (fp32 on the CPU, bf16 on an
                  accelerator), fp32, bf16 or fp16
    """

    def __init__(
        self,
        train: Annotated[Dataset, Nested("dataset")],
        test: Annotated[Dataset, Nested("dataset")],
        epochs: Annotated[int, Range(min=1)] = 100,
        lr: Annotated[float, Range(min=0, exclusive_min=True)] = 1e-2,
        weight_decay: Annotated[float, Range(min=0)] = 1e-4,
        batch_size: Annotated[int, Range(min=1)] = 1024,
        seed: int = 0,
        every: Annotated[int, Range(min=0, hint="0: only at the end of the run")] = 0,
        embed_batch_size: Annotated[int, Range(min=1)] = 512,
        projector: Literal["auto", True, False] = "auto",
        features_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
    ) -> None:
        check_same_classes(NAME, train, test)
        self.train, self.test = train, test
        self.epochs, self.lr, self.weight_decay, self.batch_size = epochs, lr, weight_decay, batch_size
        self.seed, self.every, self.embed_batch_size = seed, every, embed_batch_size
        self.projector, self.features_dtype = projector, features_dtype

    def evaluate(self, run: Run) -> dict[str, float]:
        (train_f, train_p, train_y), (test_f, test_p, test_y), num_classes = labeled_features(
            NAME, run, self.train, self.test, self.embed_batch_size, projector=self.projector,
            dtype=self.features_dtype)
        results = {}
        for key, train_x, test_x in (("linear_top1", train_f, test_f), ("linear_top1_projector", train_p, test_p)):
            if train_x is None:  # the projector was not embedded (a wide one): nothing to report for it
                continue
            # Standardized a mini-batch at a time (no standardized copy of the features).
            scale = Standardize.fit(train_x)
            classifier = train_linear_classifier(train_x, train_y, num_classes, epochs=self.epochs, lr=self.lr,
                                                 weight_decay=self.weight_decay, batch_size=self.batch_size,
                                                 seed=self.seed, device=run.device, inputs=scale)
            results[key] = accuracy(nn.Sequential(scale, classifier), test_x, test_y)
        return results

    def describe(self, results: dict[str, float]) -> str:
        projector = (f", {100 * results['linear_top1_projector']:.2f}% (projector outputs)"
                     if "linear_top1_projector" in results else "")
        return (
            f"linear probe top-1 on {len(self.test)} test images: {100 * results['linear_top1']:.2f}% "
            f"(backbone features){projector}; trained {self.epochs} epochs on {len(self.train)} images"
        )
