"""clrun/online_probe: linear heads trained on detached features while the encoder pre-trains.

(1) On separable synthetic classes the heads learn (top-1 well above chance after a few epochs).
(2) Adding the probe changes nothing the run trains: the encoder (and every other saved tensor) ends
    bit-identical to a run without it, so no gradient leaks into the encoder and no random number is
    drawn from the training's streams (the heads' initialization and the test-set evaluations included).
(3) Interrupted after epoch 1 and resumed, the probe ends exactly where an uninterrupted run's ends.
(4) The saved heads evaluate again from the checkpoint (what `cl-run eval` does).
(5) Unlabeled training data, or label maps (a segmentation data set), is an error that names the callback
    and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clrun
from clrun.run_folder import RunFolder
from clrun.plugins.callbacks.online_probe import OnlineProbe
from clrun.training import checkpointing
from clrun.training.checkpointing import Checkpointer

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
TEST_SET = "{name: clrun/synthetic, num_images: 128, num_classes: 4, seed: 1}"  # other images than training's
PROBE = f"{{name: clrun/online_probe, every: 1, test: {TEST_SET}}}"
KEY = "0:OnlineProbe"  # the probe's entry in a checkpoint's callback states

pytestmark = pytest.mark.usefixtures("no_report")  # the report is not under test here: skip its plots


def load(folder: Path, name: str, epochs: int, callbacks: str, *extra: str):
    return clrun.load_recipe(TINY, [f"train.epochs={epochs}", f"run.dir={folder}", f"run.name={name}",
                                    f"callbacks={callbacks}", *extra])


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def flat(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
    return out


def assert_equal_tensors(a: dict, b: dict) -> None:
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def probed(tmp_path_factory, reports_skipped):
    """A 2-epoch tiny run (64 images, 4 steps an epoch) with the probe, evaluated after each epoch."""
    folder = tmp_path_factory.mktemp("probed")
    with reports_skipped():
        return clrun.train(load(folder, "probed", 2, f"[{PROBE}]"))


@pytest.mark.slow  # trains until the probe separates the classes (~4 s)
def test_the_probe_learns_separable_classes(tmp_path):
    train_set = "{name: clrun/synthetic, num_images: 256, num_classes: 4}"
    probe = f"{{name: clrun/online_probe, lr: 3e-2, test: {TEST_SET}}}"
    run = clrun.train(load(tmp_path, "learns", 6, f"[{probe}]", f"data.dataset={train_set}", "data.batch_size=32",
                           "health.enabled=false"))  # the health monitor is not under test: keep it quick
    chance = 0.25
    assert run.summary["online_top1"] >= 0.6, run.summary  # 0.84 here (chance: 0.25)
    assert run.summary["online_top1_projector"] >= 0.45, run.summary  # 0.77 here
    steps, epochs = records(run.directory, "step"), records(run.directory, "epoch")
    assert len(steps) == 6 * 8 and all(0 <= r["online_train_top1"] <= 1 for r in steps)
    assert all("online_train_top1_projector" in r for r in steps)
    assert epochs[-1]["online_train_top1"] > chance + 0.2, epochs[-1]  # the epoch record holds the steps' mean
    assert "online_top1" not in epochs[0]  # every: 0 (default): only at the end
    final = records(run.directory, "final")[0]
    assert final["online_top1"] == run.summary["online_top1"]


def test_the_probe_leaves_the_training_bit_identical(probed, tmp_path):
    plain = clrun.train(load(tmp_path, "plain", 2, "[]"))
    with_probe = checkpointing.load(probed.folder.checkpoint)
    without = checkpointing.load(plain.folder.checkpoint)
    for key in ("network", "loss", "optimizer"):  # the encoder, and everything else it trains with
        assert_equal_tensors(with_probe[key], without[key])
    assert_equal_tensors(with_probe["rng"], without["rng"])  # the global random streams, too
    losses = lambda run: [r["loss"] for r in records(run.directory, "step")]  # noqa: E731
    assert losses(probed) == losses(plain)

    # The probe really trained (and was evaluated mid-run, which must not shift the random streams).
    heads = with_probe["callbacks"][KEY]["heads"]
    assert set(heads) >= {"backbone.1.weight", "projector.1.weight", "backbone.0.running_mean"}
    assert int(heads["backbone.0.num_batches_tracked"]) == 8  # one update per step
    assert "online_top1" in records(probed.directory, "epoch")[0]


class Interrupted(Exception):
    pass


def test_resume_ends_with_the_same_probe(probed, tmp_path, monkeypatch):
    save = Checkpointer.save

    def save_then_stop(checkpointer, *args, **kwargs):
        save(checkpointer, *args, **kwargs)
        raise Interrupted(checkpointer.run.directory)

    with monkeypatch.context() as patched:
        patched.setattr(Checkpointer, "save", save_then_stop)
        with pytest.raises(Interrupted) as stopped:
            clrun.train(load(tmp_path, "interrupted", 2, f"[{PROBE}]"))
    interrupted = Path(str(stopped.value))
    assert int(checkpointing.load(RunFolder(interrupted).checkpoint)["epoch"]) == 1

    resumed = clrun.train(load(tmp_path, "interrupted", 2, f"[{PROBE}]"), resume=interrupted)
    a = checkpointing.load(resumed.folder.checkpoint)["callbacks"][KEY]
    b = checkpointing.load(probed.folder.checkpoint)["callbacks"][KEY]
    assert_equal_tensors(a, b)  # the heads and their AdamW moments and step counts
    assert a["optimizer"]["state"]  # the optimizer state really is in the checkpoint
    assert resumed.summary["online_top1"] == probed.summary["online_top1"]


def test_the_saved_heads_evaluate_from_the_checkpoint(probed, build_run):
    recipe = load(probed.directory.parent, "unused", 2, f"[{PROBE}]")
    run = build_run(recipe)  # built as training builds it
    probe = recipe.callbacks[0].build()
    Checkpointer(run, [probe]).restore(probed.folder.checkpoint)
    assert probe.evaluate(run) == {k: probed.summary[k] for k in ("online_top1", "online_top1_projector")}


def test_unlabeled_training_data_is_an_error_naming_the_fix(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    data = f"{{name: clrun/image_folder, root: {images}, size: 32, labels: none}}"
    recipe = load(tmp_path, "unlabeled", 1, "[{name: clrun/online_probe, num_classes: 4}]", f"data.dataset={data}")
    with pytest.raises(clrun.UserError) as info:
        clrun.train(recipe)
    assert str(info.value) == (
        "clrun/online_probe trains linear classifiers on the training labels, but the training data set has "
        "unlabeled images (label -1): use a labeled data set in data.dataset (e.g. clrun/image_folder with "
        "labels: subfolders), or remove clrun/online_probe from callbacks"
    )


def test_label_maps_in_the_training_data_are_an_error_naming_the_dense_evaluators(tmp_path):
    data = "{name: clrun/fmnist_scenes, scenes: 16}"
    recipe = load(tmp_path, "scenes", 1, "[{name: clrun/online_probe, num_classes: 11}]", f"data.dataset={data}",
                  "backbone.in_chans=1", "data.mean=[0.171]", "data.std=[0.307]")
    with pytest.raises(clrun.UserError) as info:
        clrun.train(recipe)
    assert str(info.value) == (
        "clrun/online_probe trains linear classifiers on one class per image, but the training data set gives "
        "labels of shape (56, 56) per image (a segmentation data set's label maps): score dense features with "
        "clrun/linear_segmentation or clrun/patch_knn, or remove clrun/online_probe from callbacks"
    )


def test_num_classes_or_a_test_set_is_required():
    with pytest.raises(clrun.ComponentError) as info:
        clrun.create("callback", "clrun/online_probe")
    assert str(info.value).endswith(
        "clrun/online_probe: set num_classes (the number of classes of the training labels), or give a labeled "
        "`test` data set to infer it from"
    )
    assert isinstance(clrun.create("callback", "clrun/online_probe", num_classes=10), OnlineProbe)
