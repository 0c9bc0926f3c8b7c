"""The dense evaluators (clrun/linear_segmentation: DINOv2's linear protocol; clrun/patch_knn: HummingBird's
in-context retrieval) and what they share: the mIoU of a hand-computed confusion matrix, patch label
distributions at the token grid, and both evaluators' answers where they are known (features that name each
patch's class score 1.0; random ones score chance; constant ones predict one class).

The evaluators read four things from the run: ``encoder``, ``preprocess``, ``device`` and
``recipe.data.num_workers``; a stand-in with these (``FakeRun``) keeps the file fast (no recipe, no registry)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import clrun
from clrun import ComponentError, DataError, UserError
from clrun.plugins.callbacks.dense_features import (
    Confusion,
    miou,
    patch_label_distribution,
    pixel_accuracy,
    token_reader,
)
from clrun.plugins.callbacks.linear_segmentation import LinearSegmentation, learning_rate_factor
from clrun.plugins.callbacks.patch_knn import PatchKNN, sample_patches

PATCH = 4  # pixels per patch side of the fake backbones
SHADE = 40  # a pixel of class c has the value (c + 1) * SHADE in the first channel (0: ignored)
IGNORE = 255


class SegmentationSet(Dataset):
    """The segmentation item contract: ``(uint8 image (3, H, W), int64 labels (H, W))``, ``num_classes``,
    ``ignore_index``, ``class_names``. The image shows each pixel's class in its first channel."""

    def __init__(self, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE) -> None:
        self.labels, self.num_classes, self.ignore_index = labels.long(), num_classes, ignore_index
        self.class_names = [f"class {c}" for c in range(num_classes)]
        shade = torch.where(self.labels == ignore_index, 0, (self.labels + 1) * SHADE)
        self.images = torch.stack([shade, torch.zeros_like(shade), torch.zeros_like(shade)], dim=1).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def block_labels(patch_classes: torch.Tensor) -> torch.Tensor:
    """``(n, rows, cols)`` classes per patch as ``(n, rows * PATCH, cols * PATCH)`` label maps."""
    return patch_classes.repeat_interleave(PATCH, dim=1).repeat_interleave(PATCH, dim=2)


def random_set(n: int, num_classes: int, seed: int, grid: int = 4, ignored: float = 0.0,
               stripes: bool = False) -> SegmentationSet:
    """``n`` images of ``grid`` x ``grid`` patches of random classes (a fraction ``ignored`` of them ignored).
    With ``stripes``, the classes are those of whole columns of patches: a pixel's bilinear interpolation
    between patch centres weighs its own patch most (at least 5/8) against the neighbouring column's, so
    patch predictions that are right give label maps that are right; at a corner where three patches of
    another class meet, the three would outweigh the pixel's own (5/8 x 5/8 < 1/2)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(num_classes, (n, 1 if stripes else grid, grid), generator=g)
    classes[torch.rand(classes.shape, generator=g) < ignored] = IGNORE
    return SegmentationSet(block_labels(classes.expand(n, grid, grid)), num_classes)


class FakeViT(nn.Module):
    """A backbone with patch tokens (``clrun.tokens``) of ``PATCH``-pixel patches: ``kind`` "one_hot" gives each
    patch the one-hot vector of the class its pixels show (zeros where ignored), "random" standard normal
    vectors, "constant" ones."""

    def __init__(self, kind: str, dim: int = 8) -> None:
        super().__init__()
        self.kind, self.dim = kind, dim
        self.generator = torch.Generator().manual_seed(0)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // PATCH, width // PATCH

    def forward_tokens(self, images: torch.Tensor) -> clrun.Tokens:
        batch = len(images)
        grid = self.token_grid(*images.shape[-2:])
        if self.kind == "one_hot":
            shade = F.avg_pool2d(images[:, :1], PATCH).flatten(1)  # (B, N), the patch's class shade in [0, 1]
            classes = torch.round(shade * 255 / SHADE).long() - 1
            patches = F.one_hot(classes.clamp_min(0), self.dim).float() * (classes >= 0).unsqueeze(-1)
        elif self.kind == "random":
            patches = torch.randn(batch, grid[0] * grid[1], self.dim, generator=self.generator)
        else:
            patches = torch.ones(batch, grid[0] * grid[1], self.dim)
        return clrun.Tokens(prefix=patches[:, :0], patches=patches, grid=grid, pooled=patches.mean(dim=1))


def fake_run(encoder: nn.Module, size: tuple[int, int] | None = None) -> SimpleNamespace:
    """What the dense evaluators read of a ``clrun.Run``; ``preprocess`` scales to [0, 1] (and resizes to
    ``size``, as a run resizes to its evaluation size)."""

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return x if size is None else F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    return SimpleNamespace(encoder=encoder, preprocess=preprocess, device=torch.device("cpu"),
                           recipe=SimpleNamespace(data=SimpleNamespace(num_workers=0)))


# -- (a) scores -------------------------------------------------------------------------------------------

def test_confusion_and_miou_against_a_hand_computed_matrix():
    labels = torch.tensor([[[0, 0, 1, 1], [2, IGNORE, IGNORE, 1]]])
    predictions = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 2]]])
    confusion = Confusion(4, IGNORE)  # class 3 is in neither the labels nor the predictions
    confusion.update(predictions[:, :1], labels[:, :1])  # two batches add up
    confusion.update(predictions[:, 1:], labels[:, 1:])
    want = torch.tensor([[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(confusion.result(), want)
    # IoU = TP / (TP + FP + FN): class 0 1 / 3, class 1 2 / 4, class 2 0 / 2; class 3 (0 / 0) is left out.
    assert miou(want) == pytest.approx((1 / 3 + 2 / 4 + 0) / 3)
    assert pixel_accuracy(want) == pytest.approx(3 / 6)  # the ignored pixels count nowhere


def test_a_class_only_predicted_counts_with_iou_zero_and_an_empty_matrix_is_nan():
    assert miou(torch.tensor([[2, 1], [0, 0]])) == pytest.approx((2 / 3 + 0) / 2)
    assert math.isnan(miou(torch.zeros(3, 3, dtype=torch.long)))
    assert math.isnan(pixel_accuracy(torch.zeros(3, 3, dtype=torch.long)))


# -- (b) patch labels at the grid ---------------------------------------------------------------------------

def test_patch_label_distributions_at_the_token_grid():
    first = torch.tensor([[0, 0, 1, IGNORE], [0, 1, 1, 1], [2, 2, IGNORE, IGNORE], [2, 2, IGNORE, IGNORE]])
    second = torch.full((4, 4), 1)
    got = patch_label_distribution(torch.stack([first, second]), (2, 2), 3, IGNORE)
    want = torch.tensor([[[0.75, 0.25, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]],  # the last patch: all ignored
                         [[0, 1, 0]] * 4])
    assert torch.allclose(got, want)


def test_a_label_map_that_is_no_multiple_of_the_grid_assigns_each_pixel_by_its_centre():
    labels = torch.tensor([[[0, 1, 1], [0, 1, 1], [2, 2, 2]]])  # rows and columns {0} and {1, 2}
    got = patch_label_distribution(labels, (2, 2), 3, IGNORE)
    assert torch.allclose(got, torch.tensor([[[1, 0, 0], [0, 1, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]]))


# -- (c) patch kNN --------------------------------------------------------------------------------------------

def test_patch_knn_with_features_that_name_the_class_is_perfect():
    train, test = random_set(16, 3, seed=0, ignored=0.1), random_set(8, 3, seed=1, ignored=0.1, stripes=True)
    results = PatchKNN(train, test, k=5).evaluate(fake_run(FakeViT("one_hot")))
    assert results == {"patch_knn_miou": 1.0, "patch_knn_pixel_accuracy": 1.0}


def test_patch_knn_with_random_features_scores_chance():
    train, test = random_set(64, 2, seed=0), random_set(64, 2, seed=1)  # 1,024 test patches, half of each class
    results = PatchKNN(train, test).evaluate(fake_run(FakeViT("random", dim=64)))
    # Random predictions on two balanced classes: accuracy 1/2, IoU (1/4) / (3/4) = 1/3 per class.
    assert 0.44 < results["patch_knn_pixel_accuracy"] < 0.56
    assert 0.28 < results["patch_knn_miou"] < 0.39


def test_a_bounded_bank_keeps_its_size_and_each_images_rare_classes_first():
    # Image 0: class 0 in 7 patches, class 1 in 1; image 1: class 2 in 2 patches, one without labeled pixels.
    distribution = F.one_hot(torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 2, 2, 0]]), 3).float()
    distribution[1, 7] = 0
    generator = torch.Generator().manual_seed(0)
    kept = torch.stack([sample_patches(distribution, 2, generator) for _ in range(200)])
    assert (kept.sum(dim=2) == 2).all() and not kept[:, 1, 7].any()
    # A patch scores the frequency of its classes times a uniform draw: the rare classes' patches come first
    # (a uniform pick of 2 would keep each patch of image 0 with probability 2/8, of image 1 with 2/7).
    assert kept[:, 0, 7].float().mean() > 0.8 and kept[:, 1, 5:7].float().mean() > 0.45
    assert kept[:, 1, :5].float().mean() < 0.25
    evaluator = PatchKNN(random_set(16, 3, seed=0), random_set(4, 3, seed=1), memory_size=40)
    bank, labels = evaluator._bank(fake_run(FakeViT("one_hot")), token_reader("test", FakeViT("one_hot")), torch.float32)
    assert len(bank) == len(labels) == 16 * (40 // 16)
    assert torch.allclose(bank.norm(dim=1), torch.ones(len(bank)))


# -- (d) linear segmentation ----------------------------------------------------------------------------

def test_linear_segmentation_with_features_that_name_the_class_is_perfect_and_deterministic():
    # The logits, not probabilities, are interpolated: a pixel's own patch outweighs its neighbour's only once
    # the margins are large enough. Three informative features (a real backbone has hundreds) need a higher
    # learning rate than DINOv2's 1e-3 to get there in 40 steps. No ignored test patch: its zero features
    # give logits of their own, which its neighbours' pixels interpolate.
    train, test = random_set(32, 3, seed=0, ignored=0.1), random_set(8, 3, seed=1, stripes=True)
    evaluator = LinearSegmentation(train, test, epochs=10, batch_size=8, lr=1e-2)
    run = fake_run(FakeViT("one_hot"))
    state = torch.random.get_rng_state()
    results = evaluator.evaluate(run)
    assert results == {"seg_linear_miou": 1.0, "seg_linear_pixel_accuracy": 1.0}
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator was never drawn from
    assert evaluator.evaluate(run) == results
    line = evaluator.describe(results)
    assert line.startswith("linear segmentation on 8 test images: mIoU 100.00%, pixel accuracy 100.00%")


def test_linear_segmentation_on_constant_features_predicts_the_most_frequent_class():
    # Per image 8 patches of class 0, 6 of class 1, 2 of class 2: everything predicted 0 is right on half of
    # the pixels, with IoU 1/2 for class 0 and 0 for the two others.
    classes = torch.tensor([0] * 8 + [1] * 6 + [2] * 2)
    g = torch.Generator().manual_seed(0)
    labels = block_labels(torch.stack([classes[torch.randperm(16, generator=g)].view(4, 4) for _ in range(8)]))
    data = SegmentationSet(labels, 3)
    results = LinearSegmentation(data, data, epochs=5, batch_size=4).evaluate(fake_run(FakeViT("constant")))
    assert results["seg_linear_pixel_accuracy"] == pytest.approx(0.5)
    assert results["seg_linear_miou"] == pytest.approx(0.5 / 3)


def test_four_layers_concatenate_the_last_four_blocks_of_a_timm_vit():
    from clrun.plugins.backbones.timm_backbone import create_timm_backbone

    torch.manual_seed(0)
    vit = create_timm_backbone("vit_tiny_patch16_224", img_size=16,
                               model_args={"patch_size": 4, "embed_dim": 16, "depth": 4, "num_heads": 2}).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        patches, grid = token_reader("test", vit, 4)(x)
        last = vit.forward_tokens(x)
    assert grid == (4, 4) and patches.shape == (2, 16, 64)
    assert torch.allclose(patches[..., -16:], last.patches, atol=1e-6)  # the last block, after the final norm
    # Labels of 20 x 20 pixels, images resized to the ViT's 16 x 16: the grid covers the whole label map.
    train, test = random_set(8, 3, seed=0, grid=5), random_set(4, 3, seed=1, grid=5)
    results = LinearSegmentation(train, test, layers=4, epochs=2, batch_size=4).evaluate(fake_run(vit, (16, 16)))
    assert all(0 <= v <= 1 for v in results.values())
    assert vit.training is False  # the backbone's mode is restored


# -- (e) errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("evaluator", [PatchKNN, LinearSegmentation])
def test_a_backbone_without_patch_tokens_is_a_user_error(evaluator):
    data = random_set(2, 2, seed=0)
    name = "clrun/patch_knn" if evaluator is PatchKNN else "clrun/linear_segmentation"
    with pytest.raises(UserError, match=rf"^{name} measures patch features: it needs a backbone with patch "
                                        rf"tokens \(a vision transformer, e.g. timm/vit_small_patch16_224"):
        evaluator(data, data).evaluate(fake_run(nn.Conv2d(3, 8, 4, stride=4)))


def test_four_layers_need_forward_intermediates():
    data = random_set(2, 2, seed=0)
    with pytest.raises(UserError, match=r"^clrun/linear_segmentation: layers: 4 reads the patch tokens of the last "
                                        r"4 blocks with timm's forward_intermediates, which FakeViT lacks"):
        LinearSegmentation(data, data, layers=4).evaluate(fake_run(FakeViT("one_hot")))


def test_train_and_test_sets_must_agree_on_their_classes():
    with pytest.raises(ComponentError, match=r"^clrun/patch_knn: the train and test data sets have different "
                                             r"numbers of classes \(3 and 4\)") as error:
        PatchKNN(random_set(2, 3, seed=0), random_set(2, 4, seed=0))
    assert error.value.argument == "test"
    with pytest.raises(ComponentError, match=r"^clrun/linear_segmentation: the train data set \(TensorDataset\) "
                                             r"is not a segmentation data set"):
        LinearSegmentation(torch.utils.data.TensorDataset(torch.zeros(2)), random_set(2, 3, seed=0))
    with pytest.raises(ComponentError, match=r"k must be an integer >= 1"):
        PatchKNN(random_set(2, 3, seed=0), random_set(2, 3, seed=0), k=0)
    with pytest.raises(ComponentError, match=r"^clrun/patch_knn: memory_size 3 is less than the 4 train images") as error:
        PatchKNN(random_set(4, 3, seed=0), random_set(2, 3, seed=0), memory_size=3)
    assert error.value.argument == "memory_size"


def test_a_label_outside_the_classes_is_a_data_error():
    bad = random_set(2, 3, seed=0)
    bad.labels[0, 0, 0] = 7
    with pytest.raises(DataError, match=r"^clrun/patch_knn: a label map holds 7, which is neither a class index "
                                        r"\(0 to 2\) nor the ignore_index 255$"):
        PatchKNN(bad, bad).evaluate(fake_run(FakeViT("one_hot")))


def test_the_learning_rate_warms_up_then_decays_linearly_to_zero():
    assert learning_rate_factor(0, 100, 4) == pytest.approx(1e-6)
    assert learning_rate_factor(2, 100, 4) == pytest.approx(0.98 * (1 - 0.5 * (1 - 1e-6)))
    assert learning_rate_factor(4, 100, 4) == pytest.approx(0.96)
    assert learning_rate_factor(100, 100, 4) == 0
