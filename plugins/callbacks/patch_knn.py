"""In-context dense retrieval of patch labels: HummingBird's evaluation (Balazevic et al. 2023, "Towards
In-context Scene Understanding", NeurIPS; reference implementation github.com/vpariza/open-hummingbird-eval,
hbird/hbird_eval.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from clrun import ComponentError, Nested, Range, Run, UserError, checked
from clrun.callback import Evaluator
from clrun.plugins.callbacks.dense_features import (
    Confusion,
    FeaturesDtype,
    describe_scores,
    features_dtype,
    patch_batches,
    patch_label_distribution,
    scores,
    segmentation_classes,
    token_reader,
    upsampled_argmax,
)
from clrun.plugins.callbacks.knn import chunks_for

NAME = "clrun/patch_knn"
PREFIX = "patch_knn"


def sample_patches(distribution: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``(B, N)`` bool: the ``count`` patches kept of each image, among those with a labeled pixel, as
    HummingBird's bounded memory picks them (``HbirdEvaluation._sample_features``): each patch scores the sum,
    over the classes present in it, of the number of the image's patches where that class is present, times
    a uniform draw from ``generator``; the ``count`` lowest scores are kept, so patches of an image's rare
    classes are kept first. ``distribution`` ``(B, N, C)``: the patches' label distributions."""
    presence = distribution > 0
    labeled = presence.any(dim=2)
    frequency = presence.sum(dim=1, dtype=torch.float32)  # (B, C): patches of the image holding each class
    score = (presence.float() * frequency[:, None, :]).sum(dim=2)
    score = score * torch.rand(score.shape, generator=generator)
    score = score.masked_fill(~labeled, torch.inf)  # a patch without labeled pixels is never kept
    chosen = score.topk(min(count, score.shape[1]), dim=1, largest=False).indices
    return torch.zeros_like(labeled).scatter_(1, chosen, True) & labeled


def neighbour_labels(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, temperature: float,
                     chunk: int = 1024, bank_chunk: int = 16384) -> Tensor:
    """``(M, C)`` fp32 on the queries' device: for each query of ``queries`` ``(M, D)``, the label distributions
    ``bank_labels`` ``(N, C)`` of its ``k`` nearest rows of ``bank`` ``(N, D)`` (L2-normalized rows, on the
    queries' device) by cosine similarity ``s_j``, weighted by ``softmax_j(s_j / temperature)``:
    HummingBird's cross-attention over the retrieved neighbours (``HbirdEvaluation._cross_attention``).

    Searched as ``clrun.plugins.callbacks.knn.knn_predict`` searches: the bank ``bank_chunk`` rows at a time,
    against the queries ``chunk`` rows at a time, keeping a running top-k per query in fp32, so that the
    similarities held at once are ``chunk x bank_chunk``, never ``M x N``."""
    m, n = len(queries), len(bank)
    k = min(k, n)
    device = queries.device
    best = torch.full((m, k), -torch.inf, device=device)
    best_index = torch.zeros((m, k), dtype=torch.long, device=device)
    for b0 in range(0, n, bank_chunk):
        keys = bank[b0:b0 + bank_chunk].float()  # normalized when the bank was built
        for q0 in range(0, m, chunk):
            sims = F.normalize(queries[q0:q0 + chunk].float(), dim=1) @ keys.T
            top, index = sims.topk(min(k, len(keys)), dim=1)
            merged = torch.cat([best[q0:q0 + chunk], top], dim=1)
            merged_index = torch.cat([best_index[q0:q0 + chunk], index + b0], dim=1)
            top, where = merged.topk(k, dim=1)
            best[q0:q0 + chunk], best_index[q0:q0 + chunk] = top, merged_index.gather(1, where)
    out = torch.empty(m, bank_labels.shape[1], device=device)
    for q0 in range(0, m, chunk):
        weights = (best[q0:q0 + chunk] / temperature).softmax(dim=1)
        out[q0:q0 + chunk] = torch.einsum("mk,mkc->mc", weights, bank_labels[best_index[q0:q0 + chunk]].float())
    return out


@checked
class PatchKNN(Evaluator):
    """HummingBird's in-context dense retrieval: a memory bank of the train images' patch features, each with
    its label distribution (the fraction of its non-ignored pixels in each class); every test patch takes
    the label distributions of its ``k`` nearest bank patches by cosine similarity ``s_j``, weighted by
    ``softmax_j(s_j / temperature)``; that distribution per patch is upsampled bilinearly to the label
    map's size and each pixel's class is its argmax. Reported: ``patch_knn_miou`` (mean over classes of
    ``TP / (TP + FP + FN)``, over the classes in the ground truth or the predictions) and
    ``patch_knn_pixel_accuracy``, in [0, 1]. The patch features are the last block's patch tokens
    (``forward_tokens``), in eval mode, at the run's evaluation size, without augmentation.

    The bank holds every labeled patch of the train set, or with ``memory_size`` at most
    ``memory_size // len(train)`` per image (``sample_patches``, drawn from a generator seeded with
    ``seed``), kept L2-normalized in ``features_dtype`` (with its label distributions: fp32 with fp32
    features, fp16 otherwise) and moved to the run's device for the search: patches x (D + classes)
    values. The test set is embedded batch by batch, each batch searched against the bank in chunks
    (``neighbour_labels``) and scored in a confusion matrix; nothing of it is kept.

    Deviations from the reference implementation: exact search (it uses ScaNN or Faiss); no augmentation
    of the train images (its ``augmentation_epoch`` passes, 1 by default, use random resized crops and colour
    jitter); the run's evaluation size (it resizes to ``input_size``, 224 by default); ignored pixels left out of the patch
    label distributions and all-ignored patches out of the bank (it counts ignored pixels as class 0,
    background); predictions scored as the classes they name (it matches predicted to true classes with
    the Hungarian algorithm first, which can only raise the mIoU), over the classes in the ground truth or
    the predictions (it averages over all classes, a class absent from both counting 0).

    train:       segmentation data set of the memory bank (e.g. the training split)
    test:        segmentation data set to label (e.g. the validation split)
    k:           neighbours per test patch
    temperature: softmax temperature over the neighbours' cosine similarities
    memory_size: at most this many patches in the bank (null: every labeled patch of the train set)
    seed:        seed of the bank's patch sampling (with memory_size)
    every:       also evaluate every this many epochs of pre-training (0: only at the end of the run)
    batch_size:  images per forward pass of the encoder
    features_dtype: what the bank's features are kept in: auto (fp32 on the CPU, bf16 on an accelerator),
                 fp32, bf16 or fp16
    """

    def __init__(
        self,
        train: Annotated[Dataset, Nested("dataset")],
        test: Annotated[Dataset, Nested("dataset")],
        k: Annotated[int, Range(min=1, hint="HummingBird uses 30")] = 30,
        temperature: Annotated[float, Range(min=0, exclusive_min=True, hint="HummingBird uses 0.02")] = 0.02,
        memory_size: Optional[Annotated[int, Range(min=1, hint="null: every labeled patch")]] = None,
        seed: int = 0,
        every: Annotated[int, Range(min=0, hint="0: only at the end of the run")] = 0,
        batch_size: Annotated[int, Range(min=1)] = 64,
        features_dtype: FeaturesDtype = "auto",
    ) -> None:
        self.num_classes, self.ignore_index = segmentation_classes(NAME, train, test)
        if memory_size is not None and memory_size < len(train):
            raise ComponentError(
                f"{NAME}: memory_size {memory_size} is less than the {len(train)} train images: the bank keeps "
                f"memory_size // images patches of each image, at least one; use memory_size >= {len(train)}, "
                f"or null for every labeled patch", argument="memory_size")
        self.train, self.test = train, test
        self.k, self.temperature, self.memory_size, self.seed = k, temperature, memory_size, seed
        self.every, self.batch_size, self.features_dtype = every, batch_size, features_dtype

    def evaluate(self, run: Run) -> dict[str, float]:
        read = token_reader(NAME, run.encoder, 1)
        dtype = features_dtype(run.device, self.features_dtype)
        bank, bank_labels = self._bank(run, read, dtype)
        bank, bank_labels = bank.to(run.device), bank_labels.to(run.device)
        chunk, bank_chunk = chunks_for(run.device)
        confusion = Confusion(self.num_classes, self.ignore_index)
        for patches, grid, y in patch_batches(NAME, run, self.test, self.batch_size, read, dtype,
                                              self.num_classes, self.ignore_index):
            batch, count, dim = patches.shape
            distribution = neighbour_labels(bank, bank_labels, patches.reshape(batch * count, dim), self.k,
                                            self.temperature, chunk=chunk, bank_chunk=bank_chunk)
            distribution = distribution.view(batch, grid[0], grid[1], -1).permute(0, 3, 1, 2)
            confusion.update(upsampled_argmax(distribution, tuple(y.shape[1:])), y)
        miou, accuracy = scores(NAME, confusion.result())
        return {f"{PREFIX}_miou": miou, f"{PREFIX}_pixel_accuracy": accuracy}

    def _bank(self, run: Run, read, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The memory bank on the CPU: L2-normalized patch features ``(P, D)`` in ``dtype`` and their label
        distributions ``(P, C)``, preallocated for the most patches it can hold and trimmed to those kept."""
        n = len(self.train)
        per_image = None if self.memory_size is None else self.memory_size // max(n, 1)  # >= 1: see __init__
        generator = torch.Generator().manual_seed(self.seed)
        label_dtype = torch.float32 if dtype == torch.float32 else torch.float16
        bank = bank_labels = None
        done = 0
        for patches, grid, y in patch_batches(NAME, run, self.train, self.batch_size, read, dtype,
                                              self.num_classes, self.ignore_index):
            distribution = patch_label_distribution(y, grid, self.num_classes, self.ignore_index)
            count = patches.shape[1]
            if per_image is None or per_image >= count:
                keep = distribution.sum(dim=2) > 0  # every patch with a labeled pixel
            else:
                keep = sample_patches(distribution, per_image, generator)
            if bank is None:
                capacity = n * min(count, per_image or count)
                bank = torch.empty(capacity, patches.shape[2], dtype=dtype)
                bank_labels = torch.empty(capacity, self.num_classes, dtype=label_dtype)
            kept = F.normalize(patches[keep.to(patches.device)].float(), dim=1)
            end = done + len(kept)
            bank[done:end].copy_(kept)
            bank_labels[done:end].copy_(distribution[keep])
            done = end
        if not done:
            raise UserError(f"{NAME}: the train data set has no labeled patch (it is empty, or every label is the "
                            f"ignore_index): the memory bank would be empty")
        return bank[:done], bank_labels[:done]

    def describe(self, results: dict[str, float]) -> str:
        bank = f"at most {self.memory_size} patches" if self.memory_size is not None else "every labeled patch"
        return (f"{describe_scores(f'patch kNN (HummingBird, k={self.k})', results, PREFIX, self.test)}; "
                f"memory bank: {bank} of {len(self.train)} images")
