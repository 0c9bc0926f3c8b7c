"""Linear semantic segmentation on frozen patch features: DINOv2's linear protocol (Oquab et al. 2023,
"DINOv2: Learning Robust Visual Features without Supervision", section 7.4 and its ``BNHead``,
github.com/facebookresearch/dinov2, dinov2/eval/segmentation/models/decode_heads/linear_head.py)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from clrun import Nested, Range, Run, UserError, checked
from clrun.callback import Evaluator
from clrun.plugins.callbacks.dense_features import (
    Confusion,
    FeaturesDtype,
    describe_scores,
    features_dtype,
    patch_batches,
    scores,
    segmentation_classes,
    token_reader,
    upsampled_argmax,
)
from clrun.plugins.callbacks.linear import moments

NAME = "clrun/linear_segmentation"
PREFIX = "seg_linear"
# DINOv2's linear configs (dinov2_vit*14_{ade20k,voc2012}_linear_config.py, published beside the weights at
# dl.fbaipublicfiles.com/dinov2, not in the repository): AdamW, lr 1e-3, weight decay 1e-4, betas (0.9, 0.999);
# 40,000 iterations of 16 images (2 per GPU on 8 GPUs); the learning rate warmed up linearly from 1e-6 of it
# over 1,500 iterations, then decayed linearly to 0 (mmcv's "poly" policy, power 1).
WARMUP_FRACTION = 1500 / 40000
WARMUP_RATIO = 1e-6
BETAS = (0.9, 0.999)
# DINOv2's head initializes the 1x1 convolution from N(0, 0.01) with zero bias (mmseg's BaseDecodeHead).
INIT_STD = 0.01


class SegmentationHead(nn.Module):
    """DINOv2's ``BNHead``: BatchNorm over the patch features, then a linear layer per patch (its ``conv_seg``, a
    1x1 convolution) to class logits. ``forward(patches (B, N, D), grid) -> (B, classes, rows, columns)``."""

    def __init__(self, dim: int, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)  # statistics per feature over every patch of the batch, as BatchNorm2d on the map
        self.classifier = nn.utils.skip_init(nn.Linear, dim, num_classes)  # no draw from the global generator
        with torch.no_grad():
            self.classifier.weight.copy_(torch.randn(num_classes, dim, generator=generator) * INIT_STD)
            self.classifier.bias.zero_()

    def forward(self, patches: Tensor, grid: tuple[int, int]) -> Tensor:
        batch, count, dim = patches.shape
        logits = self.classifier(self.bn(patches.reshape(batch * count, dim).float()))
        return logits.view(batch, grid[0], grid[1], -1).permute(0, 3, 1, 2)


def learning_rate_factor(step: int, total: int, warmup: int) -> float:
    """mmcv's "poly" schedule with power 1 and a linear warmup, as DINOv2's linear configs set it: ``1 - step /
    total``, times ``1 - (1 - step / warmup)(1 - 1e-6)`` during the first ``warmup`` steps."""
    factor = 1 - min(step, total) / max(total, 1)
    if step < warmup:
        factor *= 1 - (1 - step / warmup) * (1 - WARMUP_RATIO)
    return factor


def label_storage(num_classes: int) -> torch.dtype:
    """The narrowest integer type that holds the class indices and one more, the stand-in for ignored pixels:
    a train split's label maps are kept whole (uint8: 262 KB for a 512 x 512 map)."""
    return torch.uint8 if num_classes < 255 else torch.int16 if num_classes < 2**15 - 1 else torch.int32


@torch.enable_grad()  # also when evaluate runs under no_grad
def train_segmentation_head(features: Tensor, labels: Tensor, grid: tuple[int, int], num_classes: int, *,
                            epochs: int, lr: float, weight_decay: float, batch_size: int, seed: int,
                            device: torch.device) -> SegmentationHead:
    """A ``SegmentationHead`` fitted to ``features`` ``(n, rows * columns, D)`` (any float dtype, on the CPU) and
    ``labels`` ``(n, H, W)`` whose ignored pixels hold ``num_classes``.

    Each step: a mini-batch of ``batch_size`` images (reshuffled every epoch), the head's logits bilinearly
    upsampled to the label maps' size, cross-entropy averaged over the non-ignored pixels; AdamW under
    ``learning_rate_factor``. Then the BatchNorm's running statistics are set to the exact mean and variance
    of all the train patches (``moments``): what its running averages estimate, which DINOv2's 40,000 steps
    let converge and a few epochs would not. Everything random comes from a generator seeded with ``seed``:
    the same inputs give the same head, and the global generator is never drawn from."""
    n, _, dim = features.shape
    size = tuple(labels.shape[1:])
    generator = torch.Generator().manual_seed(seed)
    head = SegmentationHead(dim, num_classes, generator).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay, betas=BETAS)
    batches = math.ceil(n / batch_size)
    total = epochs * batches
    warmup = round(WARMUP_FRACTION * total)
    step = 0
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for b in range(batches):
            index = order[b * batch_size:(b + 1) * batch_size]
            x = features[index].to(device, non_blocking=True)
            y = labels[index].to(device, non_blocking=True).long()
            for group in optimizer.param_groups:
                group["lr"] = lr * learning_rate_factor(step, total, warmup)
            logits = F.interpolate(head(x, grid), size=size, mode="bilinear", align_corners=False)
            # The mean over non-ignored pixels (torch's); a batch with none gives 0, not 0 / 0.
            loss = F.cross_entropy(logits, y, ignore_index=num_classes, reduction="sum")
            loss = loss / (y != num_classes).sum().clamp_min(1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    mean, var = moments(features.reshape(n * features.shape[1], dim))
    with torch.no_grad():
        head.bn.running_mean.copy_(mean)
        head.bn.running_var.copy_(var)
    return head.eval()


@checked
class LinearSegmentation(Evaluator):
    """Linear segmentation of the frozen backbone's patch tokens, DINOv2's linear protocol: a BatchNorm and a
    linear layer per patch (``SegmentationHead``) map each patch's features ``z`` to class logits
    ``W BN(z) + b``; the logit map is upsampled bilinearly to the label map's size and trained with the
    pixels' cross-entropy (ignored pixels left out); on the test set each pixel's class is the argmax of the
    upsampled logits. Reported: ``seg_linear_miou`` (mean over classes of ``TP / (TP + FP + FN)``, over the
    classes in the ground truth or the predictions) and ``seg_linear_pixel_accuracy``, in [0, 1].

    The patch features of the train set are computed once per evaluation (eval mode, no augmentation, the
    run's evaluation size) and kept on the CPU in ``features_dtype``: images x patches x D (x 4 with
    ``layers: 4``) values, e.g. 10,582 images x 196 patches x 384 in bf16 = 1.6 GB for a ViT-S/16 at 224
    pixels; and the label maps, one byte a pixel. The test set is embedded batch by batch and scored in
    batches (a confusion matrix), never kept.

    Deviations from DINOv2 (its head trains 40,000 steps of 16 augmented 512-pixel crops on 8 GPUs): no
    augmentation (the features are computed once, which is what makes the epochs cheap), the run's
    evaluation size and whole images (no sliding window), ``epochs`` passes instead of 40,000 steps (the
    warmup is the same fraction of them, 1,500 / 40,000), the cross-entropy averaged over non-ignored pixels
    (mmseg's ``avg_non_ignore=False`` divides by all of them), and the BatchNorm statistics set exactly from
    the train features at the end (see ``train_segmentation_head``).

    train:       segmentation data set the head is trained on (e.g. the training split, without augmentation)
    test:        segmentation data set it is measured on (e.g. the validation split, never trained on)
    layers:      1: the last block's patch tokens; 4: the last 4 blocks' concatenated (DINOv2's "+ms" heads'
                 input; needs a timm ViT's forward_intermediates)
    epochs:      passes over the train set's features
    lr:          AdamW peak learning rate (linear warmup, then linear decay to 0)
    weight_decay: AdamW (decoupled) weight decay
    batch_size:  images per step of the head's training
    seed:        seed of the head's initialization and the batch order
    every:       also evaluate every this many epochs of pre-training (0: only at the end of the run)
    embed_batch_size: images per forward pass of the encoder
    features_dtype: what the train features are kept in: auto (fp32 on the CPU, bf16 on an accelerator),
                 fp32, bf16 or fp16
    """

    def __init__(
        self,
        train: Annotated[Dataset, Nested("dataset")],
        test: Annotated[Dataset, Nested("dataset")],
        layers: Literal[1, 4] = 1,
        epochs: Annotated[int, Range(min=1, hint="DINOv2: 40,000 steps of 16 images")] = 10,
        lr: Annotated[float, Range(min=0, exclusive_min=True, hint="DINOv2 uses 1e-3")] = 1e-3,
        weight_decay: Annotated[float, Range(min=0, hint="DINOv2 uses 1e-4")] = 1e-4,
        batch_size: Annotated[int, Range(min=1, hint="DINOv2 uses 16")] = 16,
        seed: int = 0,
        every: Annotated[int, Range(min=0, hint="0: only at the end of the run")] = 0,
        embed_batch_size: Annotated[int, Range(min=1)] = 64,
        features_dtype: FeaturesDtype = "auto",
    ) -> None:
        self.num_classes, self.ignore_index = segmentation_classes(NAME, train, test)
        self.train, self.test = train, test
        self.layers, self.epochs, self.lr, self.weight_decay = layers, epochs, lr, weight_decay
        self.batch_size, self.seed, self.every = batch_size, seed, every
        self.embed_batch_size, self.features_dtype = embed_batch_size, features_dtype

    def evaluate(self, run: Run) -> dict[str, float]:
        read = token_reader(NAME, run.encoder, self.layers)
        dtype = features_dtype(run.device, self.features_dtype)
        features, labels, grid = self._train_features(run, read, dtype)
        head = train_segmentation_head(features, labels, grid, self.num_classes, epochs=self.epochs, lr=self.lr,
                                       weight_decay=self.weight_decay, batch_size=self.batch_size,
                                       seed=self.seed, device=run.device)
        del features, labels  # the test set's batches need the memory more
        confusion = Confusion(self.num_classes, self.ignore_index)
        for patches, grid, y in patch_batches(NAME, run, self.test, self.embed_batch_size, read, dtype,
                                              self.num_classes, self.ignore_index):
            with torch.no_grad():
                logits = head(patches, grid)
            confusion.update(upsampled_argmax(logits, tuple(y.shape[1:])), y)
        miou, accuracy = scores(NAME, confusion.result())
        return {f"{PREFIX}_miou": miou, f"{PREFIX}_pixel_accuracy": accuracy}

    def _train_features(self, run: Run, read, dtype: torch.dtype) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """The train set's patch features ``(n, N, D)`` in ``dtype`` and label maps ``(n, H, W)`` (ignored pixels
        as ``num_classes``), both on the CPU, preallocated once the first batch tells their sizes."""
        n = len(self.train)
        if n == 0:
            raise UserError(f"{NAME}: the train data set is empty: there is nothing to train the head on")
        features = labels = grid = None
        done = 0
        for patches, grid, y in patch_batches(NAME, run, self.train, self.embed_batch_size, read, dtype,
                                              self.num_classes, self.ignore_index):
            if features is None:
                features = torch.empty(n, *patches.shape[1:], dtype=dtype)
                labels = torch.empty(n, *y.shape[1:], dtype=label_storage(self.num_classes))
            end = done + len(patches)
            features[done:end].copy_(patches)
            labels[done:end].copy_(y.masked_fill(y == self.ignore_index, self.num_classes))
            done = end
        return features[:done], labels[:done], grid

    def describe(self, results: dict[str, float]) -> str:
        layers = "last block" if self.layers == 1 else f"last {self.layers} blocks"
        return (f"{describe_scores('linear segmentation', results, PREFIX, self.test)} (patch tokens of the "
                f"{layers}); head trained {self.epochs} epochs on {len(self.train)} images")
