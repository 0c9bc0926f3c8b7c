"""Streamed data sets: ``cl-run shards`` writes an image folder as tar shards, ``clrun/webdataset`` reads them
split over processes and loader workers, and the stream resumes mid-epoch on exactly the batches an
uninterrupted epoch would have served (``clrun.Stream``), with any number of workers."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import clrun
from clrun.cli import main
from clrun.errors import DataError, UserError
from clrun.plugins.datasets.image_folder import ImageFolder
from clrun.commands.shards import write_shards

pytestmark = pytest.mark.usefixtures("cli_uses_session_registry")

SIZE = 12
TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


@pytest.fixture
def folder(tmp_path) -> Path:
    """26 images of different sizes and formats in two class subfolders."""
    rng = np.random.default_rng(0)
    for label, count in (("cat", 14), ("dog", 12)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (int(rng.integers(12, 40)), int(rng.integers(12, 40)), 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.{'png' if i % 2 else 'jpg'}")
    return tmp_path / "images"


@pytest.fixture
def shards(folder, tmp_path) -> Path:
    write_shards(folder, tmp_path / "shards", shard_size=6)  # 5 shards: 6, 6, 6, 6 and 2 images
    return tmp_path / "shards"


def stream(shards: Path, **options):
    return clrun.create("dataset", "clrun/webdataset", urls=str(shards), size=SIZE, **options)


@pytest.fixture
def hf_folders(folder, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """The same 26 images as a Hugging Face data set: a save_to_disk folder and 3 Parquet files."""
    import datasets

    # datasets sleeps 5 s whenever a Parquet stream is closed before its end (a guard against an Arrow
    # crash at interpreter exit, apache/arrow#45214): once per epoch and reader in training, but these
    # tests open dozens of streams. Forked loader workers inherit the setting.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": f.read_bytes(), "path": None} for f in files],
         "label": [["cat", "dog"].index(f.parent.name) for f in files]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    table.save_to_disk(str(tmp_path / "saved"))
    for k in range(3):
        table.shard(3, k, contiguous=True).to_parquet(str(tmp_path / "parquet" / f"part-{k}.parquet"))
    return tmp_path / "saved", tmp_path / "parquet"


def hf_stream(folder: Path, **options):
    return clrun.create("dataset", "clrun/hf_dataset", path=str(folder), size=SIZE, streaming=True, **options)


def streams(shards: Path, hf_folders: tuple[Path, Path], **options) -> dict:
    """The same images as a webdataset stream and a Parquet stream."""
    return {"webdataset": stream(shards, **options), "parquet": hf_stream(hf_folders[1], **options)}


def batches(dataset, workers: int, seed: int = 5, batch: int = 2, ranks: int = 1, rank: int = 0, done: int = 0) -> list:
    dataset.place(seed, batch, ranks, rank, done)
    return [(images, labels) for images, labels in DataLoader(dataset, batch_size=batch, num_workers=workers)]


def test_the_shards_hold_every_image_once_with_its_class_and_decode_as_the_folder_does(folder, shards):
    index = json.loads((shards / "index.json").read_text())
    assert index["images"] == 26 and index["classes"] == ["cat", "dog"]
    assert [s["images"] for s in index["shards"]] == [6, 6, 6, 6, 2]
    with tarfile.open(shards / "shard-000000.tar") as tar:
        names = tar.getnames()
    suffixes = [Path(n).suffix for n in names]
    assert len(names) == 12 and suffixes.count(".cls") == 6 and set(suffixes) <= {".cls", ".png", ".jpg"}

    # One reader, no shuffling: one epoch is every image once, each as clrun/image_folder serves it.
    served = batches(stream(shards, shuffle=0), workers=0, batch=1)
    reference = ImageFolder(str(folder), size=SIZE)
    expected = sorted((reference[i][0].numpy().tobytes(), reference[i][1]) for i in range(len(reference)))
    got = sorted((images[0].numpy().tobytes(), int(labels[0])) for images, labels in served[:26])
    assert len(served) == 26 and got == expected


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumed_mid_epoch_serves_the_batches_an_uninterrupted_epoch_would(shards, hf_folders, workers):
    for kind, dataset in streams(shards, hf_folders, shuffle=5).items():
        whole = batches(dataset, workers)
        assert len(whole) == 13, kind  # 26 images in batches of 2
        for done in (1, 4, 7):
            rest = batches(dataset, workers, done=done)
            assert len(rest) == len(whole) - done, kind
            for (a, la), (b, lb) in zip(rest, whole[done:]):
                assert torch.equal(a, b) and torch.equal(la, lb), (kind, done)


def test_a_hugging_face_data_set_serves_the_folders_pixels_from_disk_and_from_a_parquet_stream(folder, hf_folders):
    reference = ImageFolder(str(folder), size=SIZE)
    expected = sorted((reference[i][0].numpy().tobytes(), reference[i][1]) for i in range(len(reference)))
    saved = clrun.create("dataset", "clrun/hf_dataset", path=str(hf_folders[0]), size=SIZE)
    assert sorted((saved[i][0].numpy().tobytes(), saved[i][1]) for i in range(len(saved))) == expected
    served = batches(hf_stream(hf_folders[1], shuffle=0), workers=0, batch=1)
    assert sorted((images[0].numpy().tobytes(), int(labels[0])) for images, labels in served) == expected


def test_processes_read_disjoint_shards_and_epochs_are_shuffled_differently(shards):
    dataset = stream(shards, shuffle=0, epoch_size=12)  # one pass over 4 of the 5 shards per epoch
    seen = [{images.numpy().tobytes() for batch, _ in batches(dataset, 0, ranks=2, rank=r) for images in batch}
            for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1]
    first, second = (batches(dataset, 0, seed=s) for s in (1, 2))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(first, second))


def test_stream_errors_name_the_place_and_the_fix(shards, tmp_path):
    with pytest.raises(DataError) as info:
        batches(stream(shards), workers=0, ranks=6, rank=5)
    assert str(info.value) == ("clrun/webdataset: 5 shard(s) for 6 readers (processes x data.num_workers): every reader "
                               "needs a shard of its own; write more shards (`cl-run shards --shard-size`), lower "
                               "data.num_workers, or set resampled: true")
    assert len(batches(stream(shards, resampled=True), workers=0, ranks=6, rank=5)) == 2  # 26 // 12 batches
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"has no index.json: it is not a folder written by `cl-run shards`"):
        stream(tmp_path / "empty")
    with pytest.raises(UserError, match=r"1 of 2 shards not found, e.g. .*shard-000009.tar"):
        stream(f"{shards}/shard-{{000000,000009}}.tar", epoch_size=10)
    with pytest.raises(UserError, match=r"epoch_size: set the number of images in one epoch"):
        stream(f"{shards}/shard-000000.tar")
    with pytest.raises(DataError, match=r"shard-000000.tar: sample 000000000 has no image entry \(webp\); it has "
                                        r"\['cls', '(jpg|png)'\]; set data.dataset.image_key to its image's extension$"):
        batches(stream(f"{shards}/shard-000000.tar", epoch_size=6, image_key="webp", shuffle=0), workers=0)


def test_the_shards_command_reports_what_it_wrote_and_refuses_a_folder_in_use(folder, tmp_path, capsys):
    out = tmp_path / "written"
    assert main(["shards", str(folder), str(out), "--shard-size", "10"]) == 0
    assert capsys.readouterr().out == (
        f"cl-run: wrote 26 images in 3 shards, 2 classes to {out} (see its index.json); train on them with "
        f"data.dataset.name=clrun/webdataset data.dataset.urls={out}\n")
    assert main(["shards", str(folder), str(out)]) == 2
    assert capsys.readouterr().err == f"cl-run: error: cl-run shards: {out} is not empty; give a new or empty folder for the shards\n"
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match=f"cl-run shards: no images in {tmp_path / 'nothing'} "):
        write_shards(tmp_path / "nothing", tmp_path / "x")


def test_a_run_on_shards_with_loader_workers_that_dies_mid_epoch_resumes_bit_exactly(
        shards, tmp_path, crash_before_step, assert_same_checkpoints):
    def recipe(name: str):
        return clrun.load_recipe(TINY, [
            f"data.dataset={{name: clrun/webdataset, urls: {shards}, size: 32, shuffle: 8}}", "data.batch_size=4",
            "data.num_workers=2", "train.epochs=2", "train.checkpoint_every_steps=2", "health.enabled=false",
            f"run.dir={tmp_path}", f"run.name={name}"])

    # 26 images in batches of 4: 6 steps an epoch. Dies as step 10 begins: the checkpoint of step 8, in
    # epoch 2 after 2 batches, which two workers served.
    folder = crash_before_step(recipe("crashed"), at=10)
    resumed = clrun.train(recipe("crashed"), resume=folder)
    straight = clrun.train(recipe("straight"))
    assert_same_checkpoints(resumed.directory, straight.directory)
    epochs = [json.loads(line) for line in straight.folder.metrics.read_text().splitlines() if '"epoch"' in line]
    assert [r["step"] for r in epochs if r["kind"] == "epoch"] == [6, 12]
