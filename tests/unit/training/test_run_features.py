"""``Run.features``: embeds a data set once per step, however many evaluators ask for it; keeps the
features in fp32 on the CPU or in the half precision asked for (no fp32 copy), and the projector's outputs
only where the projector is narrow or they are asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clrun

TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"


@pytest.mark.usefixtures("no_report")  # the report is not under test here: skip its plots
def test_features_are_shared_within_a_step_and_recomputed_after_it(tmp_path):
    run = clrun.train(clrun.load_recipe(TINY, [f"run.dir={tmp_path}", "health.enabled=false"]))
    bank = clrun.create("dataset", "clrun/synthetic", num_images=40)
    same_contents = clrun.create("dataset", "clrun/synthetic", num_images=40)  # another object, same images
    other = clrun.create("dataset", "clrun/synthetic", num_images=40, seed=1)
    first = run.features(bank)
    assert run.features(same_contents) is first
    assert run.features(other) is not first
    assert not torch.equal(run.features(other)[0], first[0])
    with torch.no_grad():  # the encoder moves on: its features must be computed again
        next(run.encoder.parameters()).mul_(2.0)
    run.step += 1
    again = run.features(bank)
    assert again is not first and not torch.equal(again[0], first[0])
    assert torch.equal(again[2], first[2])  # same labels


# -- what is kept: the dtype, the projector ----------------------------------------------------------

def test_features_are_fp32_on_the_cpu_and_kept_in_half_precision_without_an_fp32_copy(build_run):
    run = build_run(clrun.load_recipe(TINY, ["health.enabled=false"]))
    data = clrun.create("dataset", "clrun/synthetic", num_images=40)
    kept = run.features(data, batch_size=16)  # 3 batches, the last one partial
    images = torch.stack([data[i][0] for i in range(len(data))])
    run.network.eval()
    with torch.no_grad():
        direct = run.network.backbone(run.preprocess(images))
    assert kept.features.dtype == torch.float32 and torch.allclose(kept.features, direct, atol=1e-5)
    assert kept.projections.shape == (40, run.projection_dim)  # the tiny recipe's projector is narrow
    assert torch.equal(kept.labels, torch.tensor([int(data[i][1]) for i in range(40)]))

    half = run.features(data, batch_size=16, dtype="bf16")
    assert half is not kept and run.features(data, batch_size=16, dtype="bf16") is half  # cached per choice
    assert half.features.dtype == half.projections.dtype == torch.bfloat16
    assert torch.equal(half.features, kept.features.bfloat16())  # computed in fp32 on the CPU, rounded once
    # The storage holds the bf16 rows and nothing more: no fp32 buffer behind a view, no concatenated copy.
    assert half.features.untyped_storage().nbytes() == half.features.numel() * 2


def test_a_wide_projector_is_embedded_only_when_asked(build_run):
    from clrun.plugins.callbacks.knn import KNNEvaluation
    from clrun.training.embedding import NARROW_PROJECTOR

    run = build_run(clrun.load_recipe(TINY, ["health.enabled=false", f"projector.out_dim={NARROW_PROJECTOR + 1}"]))
    train = clrun.create("dataset", "clrun/synthetic", num_images=32, num_classes=4)
    test = clrun.create("dataset", "clrun/synthetic", num_images=16, num_classes=4, seed=1)
    features, projections, labels = run.features(train)
    assert projections is None and features.shape == (32, run.feature_dim) and len(labels) == 32
    assert run.features(train, projector=True).projections.shape == (32, NARROW_PROJECTOR + 1)

    knn = KNNEvaluation(train, test)
    results = knn.evaluate(run)
    assert set(results) == {"knn_top1"}  # the evaluators report the projector only where it was embedded
    assert "projector" not in knn.describe(results)
    assert set(KNNEvaluation(train, test, projector=True).evaluate(run)) == {"knn_top1", "knn_top1_projector"}


def test_the_narrow_rule_and_the_default_dtypes():
    from clrun.training.embedding import NARROW_PROJECTOR, storage_dtype, wants_projector

    assert NARROW_PROJECTOR == 2048  # as wide as a ResNet-50's features (docs/guides/evaluation.md)
    assert wants_projector("auto", 2048) and not wants_projector(None, 2049)  # DINO's 65,536: not by default
    assert wants_projector(True, 65536) and not wants_projector(False, 128)
    assert storage_dtype(torch.device("cpu")) == torch.float32
    assert storage_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert storage_dtype(torch.device("cuda", 0), "fp32") == torch.float32
    assert storage_dtype(torch.device("cpu"), "fp16") == torch.float16
    with pytest.raises(ValueError, match="features are kept in one of fp32, bf16, fp16"):
        storage_dtype(torch.device("cpu"), "int8")


def test_a_segmentation_data_set_is_an_error_naming_the_dense_evaluators(build_run):
    """kNN, the linear probe and the online probe's test set embed one class per image; label maps (a
    segmentation data set's) stop before any forward, with the way to score dense features."""
    run = build_run(clrun.load_recipe(TINY, ["health.enabled=false"]))
    scenes = clrun.create("dataset", "clrun/fmnist_scenes", scenes=4)
    with pytest.raises(clrun.DataError) as info:
        run.features(scenes)
    assert str(info.value) == (
        "FMNISTScenes gives labels of shape (56, 56) per image (label maps, a segmentation data set), but this "
        "evaluation needs one class per image; score dense features with clrun/linear_segmentation or "
        "clrun/patch_knn, or give it an image classification data set")
