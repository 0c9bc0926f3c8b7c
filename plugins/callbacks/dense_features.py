"""What the dense evaluators (``clrun/linear_segmentation``, ``clrun/patch_knn``) share: a segmentation data
set's patch features, its label maps at the token grid, and the scores of predicted label maps.

A segmentation data set gives ``dataset[i] -> (image, labels)``: ``image`` a uint8 ``(C, H, W)`` tensor,
``labels`` an int64 ``(H, W)`` map of class indices in ``[0, num_classes)`` or ``ignore_index``, every item
of the same ``H, W``; its attributes ``num_classes``, ``ignore_index`` and ``class_names``.

Patch features are those of the run's backbone in eval mode, without gradients and without augmentation:
``run.preprocess(images)`` (the run's evaluation size and normalization) then the backbone's
``forward_tokens`` (``clrun.tokens``), or for the last 4 blocks timm's ``forward_intermediates``. On an
accelerator the forward runs under autocast in the features' half precision, as ``Run.features`` does.

Scores follow mmsegmentation's ``mean_iou``, which DINOv2's segmentation evaluation reports: over a confusion
matrix of non-ignored pixels (rows: true class, columns: predicted class), the IoU of class c is
``TP_c / (TP_c + FP_c + FN_c)``; mIoU is its mean over the classes that occur in the ground truth or in the
predictions (a class absent from both has 0 / 0 and is left out: mmsegmentation's NaN under ``nanmean``;
a class predicted but absent from the ground truth counts, with IoU 0); pixel accuracy is
``sum_c TP_c / (non-ignored pixels)``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from clrun import ComponentError, DataError, Run, UserError, offers_tokens

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FeaturesDtype = Literal["auto", "fp32", "bf16", "fp16"]
# Values (not bytes) of one step of upsampled class scores: images are upsampled to the label maps' size a
# few at a time, so that a batch of 512 x 512 maps over 150 classes is never whole (64 Mi values: 256 MB fp32).
UPSAMPLED_VALUES = 2**26


def segmentation_classes(owner: str, train: Dataset, test: Dataset) -> tuple[int, int]:
    """``(num_classes, ignore_index)`` that ``train`` and ``test`` share; a ComponentError naming the data set
    at fault when one is not a segmentation data set (no ``num_classes`` / ``ignore_index``) or when they
    differ: a label would not mean the same class in both and the mIoU would be wrong without a sign."""
    for name, dataset in (("train", train), ("test", test)):
        count, ignore = getattr(dataset, "num_classes", None), getattr(dataset, "ignore_index", None)
        integers = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (count, ignore))
        if not integers or count < 1:
            raise ComponentError(
                f"{owner}: the {name} data set ({type(dataset).__name__}) is not a segmentation data set: it "
                f"needs the attributes num_classes and ignore_index, and items (image, label map); give it a "
                f"segmentation data set", argument=name)
        if 0 <= ignore < count:
            raise ComponentError(f"{owner}: the {name} data set's ignore_index {ignore} is one of its "
                                 f"{count} classes (0 to {count - 1}); it must be outside them", argument=name)
    if int(train.num_classes) != int(test.num_classes):
        raise ComponentError(
            f"{owner}: the train and test data sets have different numbers of classes ({train.num_classes} and "
            f"{test.num_classes}): their labels would not mean the same classes and the mIoU would be wrong. "
            f"Give both the same classes (the same data set, two splits)", argument="test")
    if int(train.ignore_index) != int(test.ignore_index):
        raise ComponentError(f"{owner}: the train and test data sets ignore different labels ({train.ignore_index} "
                             f"and {test.ignore_index}); give both the same ignore_index", argument="test")
    a, b = getattr(train, "class_names", None), getattr(test, "class_names", None)
    if a and b and list(map(str, a)) != list(map(str, b)):
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if str(x) != str(y)), min(len(a), len(b)))
        raise ComponentError(
            f"{owner}: the train and test data sets name their classes differently (label {k} is "
            f"{a[k] if k < len(a) else None!r} in train, {b[k] if k < len(b) else None!r} in test); give both "
            f"the same classes", argument="test")
    return int(train.num_classes), int(train.ignore_index)


def features_dtype(device: torch.device, name: str) -> torch.dtype:
    """What patch features are kept in: ``name`` ("fp32", "bf16", "fp16"), or for "auto" fp32 on the CPU (which
    emulates bf16 arithmetic, slowly) and bf16 on an accelerator (what it computes in under autocast)."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return DTYPES[name]


TokenReader = Callable[[Tensor], tuple[Tensor, tuple[int, int]]]


def token_reader(owner: str, backbone: nn.Module, layers: int = 1) -> TokenReader:
    """``read(x) -> (patches (B, N, D * layers), (rows, columns))``: the patch tokens (raster order, prefix
    tokens left out) of the last block (``forward_tokens``, after the final norm) or, with ``layers=4``,
    of the last 4 blocks, each through the final norm and concatenated along the features (DINOv2's
    ``get_intermediate_layers(n=4, norm=True)`` and ``resize_concat``; one grid, so no resize is needed).

    UserError, naming ``owner`` and the fix, when the backbone has no patch tokens (a CNN), or has no
    timm ``forward_intermediates`` for ``layers=4``."""
    if not offers_tokens(backbone):
        raise UserError(
            f"{owner} measures patch features: it needs a backbone with patch tokens (a vision transformer, "
            f"e.g. timm/vit_small_patch16_224, whose forward_tokens gives them); {type(backbone).__name__} "
            f"has none. Use a ViT backbone, or remove {owner} from the callbacks")
    if layers == 1:
        def last(x: Tensor) -> tuple[Tensor, tuple[int, int]]:
            tokens = backbone.forward_tokens(x)
            return tokens.patches, tuple(tokens.grid)
        return last
    if not callable(getattr(backbone, "forward_intermediates", None)):
        raise UserError(
            f"{owner}: layers: {layers} reads the patch tokens of the last {layers} blocks with timm's "
            f"forward_intermediates, which {type(backbone).__name__} lacks; use layers: 1 (the last block's "
            f"tokens) or a timm vision transformer backbone")

    def several(x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        # timm leaves the prefix (class, register) tokens out unless return_prefix_tokens=True; norm=True
        # puts each block's tokens through the final norm, as DINOv2's get_intermediate_layers does.
        blocks = backbone.forward_intermediates(x, indices=layers, norm=True, output_fmt="NLC",
                                                intermediates_only=True)
        return torch.cat(list(blocks), dim=-1), tuple(backbone.token_grid(x.shape[-2], x.shape[-1]))
    return several


def patch_batches(owner: str, run: Run, dataset: Dataset, batch_size: int, read: TokenReader, dtype: torch.dtype,
                  num_classes: int, ignore_index: int) -> Iterator[tuple[Tensor, tuple[int, int], Tensor]]:
    """``(patches, grid, labels)`` for each batch of ``dataset`` in order: ``patches`` ``(B, N, D)`` on the run's
    device in ``dtype``, ``grid`` ``(rows, columns)`` with ``rows * columns == N``, ``labels`` the int64
    ``(B, H, W)`` label maps, on the CPU, checked (``check_labels``).

    The backbone is in eval mode while this runs (restored when the iteration ends) and each forward runs
    under ``no_grad``, entered and left before each yield: the caller's code between batches (a head
    being trained) keeps gradients. The loader draws from a private generator, never the global one."""
    backbone = run.encoder
    device = run.device
    half = dtype != torch.float32 and device.type != "cpu"  # the CPU emulates bf16: compute in fp32 there
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=run.recipe.data.num_workers,
                        generator=torch.Generator(), pin_memory=device.type == "cuda")
    was_training = backbone.training
    backbone.eval()
    try:
        for images, labels, *_ in loader:
            if labels.ndim != 3:
                raise DataError(f"{owner}: {type(dataset).__name__} gives labels of shape {tuple(labels.shape[1:])} "
                                f"per image; a segmentation data set gives an (H, W) label map per image")
            labels = labels.long()
            check_labels(owner, labels, num_classes, ignore_index)
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=half):
                patches, grid = read(run.preprocess(images))
            if patches.ndim != 3 or patches.shape[1] != grid[0] * grid[1]:
                raise UserError(f"{owner}: the backbone gave patch tokens of shape {tuple(patches.shape)} for a "
                                f"{grid[0]} x {grid[1]} grid; expected (B, {grid[0] * grid[1]}, D)")
            yield patches.to(dtype), grid, labels
    finally:
        backbone.train(was_training)


def check_labels(owner: str, labels: Tensor, num_classes: int, ignore_index: int) -> None:
    """DataError naming a label that is neither a class index nor ``ignore_index``."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise DataError(f"{owner}: a label map holds {value}, which is neither a class index (0 to "
                        f"{num_classes - 1}) nor the ignore_index {ignore_index}")


def patch_label_distribution(labels: Tensor, grid: tuple[int, int], num_classes: int, ignore_index: int) -> Tensor:
    """``(B, rows * columns, num_classes)``: for each patch of the ``grid`` (raster order), the fraction of its
    non-ignored pixels in each class (HummingBird's soft patch labels); all zeros for a patch whose pixels
    are all ignored.

    ``labels`` ``(B, H, W)``. The image is resized whole to the encoder's input, so a patch covers the same
    fraction of the label map: pixel (y, x) belongs to cell ``(floor((y + 1/2) rows / H), floor((x + 1/2)
    columns / W))``, the cell that holds its centre (where ``H`` is a multiple of ``rows``: the
    ``H / rows`` x ``W / columns`` block of pixels under the patch, as HummingBird's ``_patchify_gt``)."""
    batch, height, width = labels.shape
    rows, columns = grid
    device = labels.device
    cell_row = torch.div((2 * torch.arange(height, device=device) + 1) * rows, 2 * height, rounding_mode="floor")
    cell_col = torch.div((2 * torch.arange(width, device=device) + 1) * columns, 2 * width, rounding_mode="floor")
    cell = (cell_row[:, None] * columns + cell_col[None, :]).expand(batch, height, width)
    image = torch.arange(batch, device=device)[:, None, None] * (rows * columns)
    keep = labels != ignore_index
    index = ((image + cell) * num_classes + labels)[keep]  # one bin per (image, patch, class)
    counts = torch.bincount(index, minlength=batch * rows * columns * num_classes).float()
    counts = counts.view(batch, rows * columns, num_classes)
    return counts / counts.sum(dim=2, keepdim=True).clamp_min(1)


def upsampled_argmax(scores: Tensor, size: tuple[int, int], max_values: int = UPSAMPLED_VALUES) -> Tensor:
    """``(B, H, W)`` int64: the argmax over classes of ``scores`` ``(B, C, rows, columns)`` bilinearly upsampled
    to ``size`` (``align_corners=False``, as mmsegmentation's ``resize`` in DINOv2's head and HummingBird's
    evaluation), in fp32, a few images at a time (at most ``max_values`` upsampled values at once)."""
    batch, classes = scores.shape[:2]
    step = max(1, max_values // max(1, classes * size[0] * size[1]))
    out = torch.empty(batch, *size, dtype=torch.long, device=scores.device)
    for i in range(0, batch, step):
        upsampled = F.interpolate(scores[i:i + step].float(), size=size, mode="bilinear", align_corners=False)
        out[i:i + step] = upsampled.argmax(dim=1)
    return out


class Confusion:
    """A confusion matrix of label maps, accumulated a batch at a time (``update``), never all pixels at once:
    ``matrix[t, p]`` counts the non-ignored pixels of true class ``t`` predicted as ``p``. Kept where the first
    predictions are (int64)."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix: Tensor | None = None

    def update(self, predictions: Tensor, labels: Tensor) -> None:
        """Count ``predictions`` against ``labels`` (both ``(B, H, W)``; ignored pixels are skipped)."""
        labels = labels.to(predictions.device)
        keep = labels != self.ignore_index
        pairs = labels[keep] * self.num_classes + predictions[keep]
        counts = torch.bincount(pairs, minlength=self.num_classes ** 2).view(self.num_classes, self.num_classes)
        self.matrix = counts if self.matrix is None else self.matrix + counts

    def result(self) -> Tensor:
        """The matrix on the CPU (zeros before any update)."""
        if self.matrix is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        return self.matrix.cpu()


def miou(confusion: Tensor) -> float:
    """Mean IoU of a confusion matrix (rows: true class, columns: predicted): the mean of
    ``TP_c / (TP_c + FP_c + FN_c)`` over the classes with ``TP_c + FP_c + FN_c > 0``, those in the ground
    truth or the predictions (mmsegmentation's ``nanmean``); NaN for an empty matrix."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - tp  # TP + FP + FN
    present = union > 0
    if not bool(present.any()):
        return float("nan")
    return (tp[present] / union[present]).mean().item()


def pixel_accuracy(confusion: Tensor) -> float:
    """The fraction of non-ignored pixels predicted right; NaN for an empty matrix."""
    total = confusion.sum().item()
    return confusion.diagonal().sum().item() / total if total else float("nan")


def scores(owner: str, confusion: Tensor) -> tuple[float, float]:
    """``(mIoU, pixel accuracy)``; UserError when the test set has no labeled pixel to score."""
    if int(confusion.sum()) == 0:
        raise UserError(f"{owner}: the test data set has no labeled pixel (every label is the ignore_index or "
                        f"it is empty): there is nothing to score")
    return miou(confusion), pixel_accuracy(confusion)


def describe_scores(title: str, results: dict[str, Any], prefix: str, test: Dataset) -> str:
    """``"<title> on N test images: mIoU x%, pixel accuracy y%"``."""
    return (f"{title} on {len(test)} test images: mIoU {100 * results[prefix + '_miou']:.2f}%, "
            f"pixel accuracy {100 * results[prefix + '_pixel_accuracy']:.2f}%")
