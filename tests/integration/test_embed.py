"""``cl-run embed``: a folder of real Fashion-MNIST images (PNG files, one of them damaged) through a trained
encoder into a Parquet table: every readable image in order with its embedding, bit for bit the encoder's
output on the run's own preprocessing; the damaged one named, skipped and counted; a rerun after an
interruption picks up what is missing and writes the same file; every kind of source gives the same table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

import clrun
from clrun.cli import main as cl_run_main
from clrun.commands import embed as embed_module
from clrun.commands.embed_parts import Parts
from clrun.commands.encoder_source import tensors_sha256
from clrun.encoder_file import encoder_state

pytestmark = pytest.mark.usefixtures("cli_uses_session_registry")

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
DAMAGED = "shirts/003-broken.png"  # sorts between readable files: a gap in the middle, not at the end
MEAN, STD = 0.25, 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory, reports_skipped) -> clrun.Run:
    """The tiny recipe on 1-channel images, normalized (mean/std: the embedding must apply them)."""
    recipe = clrun.load_recipe(TINY, [f"run.dir={tmp_path_factory.mktemp('runs')}", "run.name=enc",
                                      "data.dataset.channels=1", "backbone.in_chans=1", f"data.mean=[{MEAN}]",
                                      f"data.std=[{STD}]", "health.enabled=false"])
    with reports_skipped():
        run = clrun.train(recipe)
    run.network.eval()
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Ten Fashion-MNIST test images as PNG files in two class folders, and a file that is no image."""
    folder = tmp_path_factory.mktemp("images")
    test_split = clrun.create("dataset", "clrun/fashion_mnist", split="test")
    for i in range(10):
        image, label = test_split[i]
        (folder / ("shirts" if i % 2 else "shoes")).mkdir(exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / ("shirts" if i % 2 else "shoes") / f"{i:03d}.png")
    (folder / DAMAGED).write_bytes(b"\x89PNG\r\n\x1a\n but then the file ends")
    return folder


def cl_run(capsys, *args) -> tuple[int, str, str]:
    code = cl_run_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def embedded(trained, images, tmp_path_factory) -> Path:
    """The run folder's embeddings of the images, in one batch (what `reference` computes), 3 nearest each."""
    out = tmp_path_factory.mktemp("embedded") / "images.parquet"
    assert cl_run_main(["embed", str(trained.directory), str(images), "-o", str(out), "--nearest", "3"]) == 0
    return out


def readable(images: Path) -> list[str]:
    return sorted(name for name in (p.relative_to(images).as_posix() for p in images.rglob("*.png")) if name != DAMAGED)


@torch.no_grad()
def reference(network, images: Path, names: list[str], projector: bool = False) -> torch.Tensor:
    """The encoder's output on the images as the run evaluates them: decoded by the image folder reader at the
    run's 32 px, scaled to [0, 1], normalized with the recipe's mean and std; one batch."""
    reader = clrun.create("dataset", "clrun/image_folder", root=str(images), size=32, channels=1)
    by_name = {f.relative_to(images).as_posix(): i for i, f in enumerate(reader.files)}
    batch = torch.stack([reader[by_name[n]][0] for n in names]).float() / 255
    features = network.backbone((batch - MEAN) / STD)
    return network.projector(features) if projector else features


def embeddings(table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy().reshape(len(table), column.type.list_size)


def test_every_readable_image_in_order_with_the_encoders_output_bit_for_bit(trained, images, embedded):
    table = pq.read_table(embedded)
    names = readable(images)
    assert table.column_names == ["index", "name", "label", "embedding", "nearest", "nearest_similarity"]
    assert table.column("name").to_pylist() == names
    all_files = sorted([*names, DAMAGED])
    assert table.column("index").to_pylist() == [all_files.index(n) for n in names]  # positions: the gap is visible
    assert table.column("label").to_pylist() == [0 if n.startswith("shirts") else 1 for n in names]
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[96]"
    assert np.array_equal(embeddings(table), reference(trained.network, images, names).numpy())


def test_the_file_records_its_provenance(trained, images, embedded):
    metadata = {k.decode(): v.decode() for k, v in pq.read_schema(embedded).metadata.items()}
    exported = encoder_state(trained.network.state_dict())
    assert metadata["encoder_sha256"] == tensors_sha256(exported)
    assert metadata["features"] == "backbone" and metadata["source_kind"] == "checkpoint"
    assert metadata["recipe"] == (trained.directory / "recipe.yaml").read_text()
    assert json.loads(metadata["preprocessing"]) == {
        "size": [32, 32], "channels": 1, "scale": "uint8 / 255", "mean": [MEAN], "std": [STD],
        "resize": "bilinear, antialiased, to size where an image's size differs"}
    assert json.loads(metadata["dataset"]) == {"name": "clrun/image_folder", "root": str(images), "size": 32, "channels": 1}
    assert json.loads(metadata["classes"]) == ["shirts", "shoes"]
    assert (metadata["count"], metadata["nearest"], metadata["nearest_similarity"]) == ("11", "3", "cosine")
    [skipped] = json.loads(metadata["skipped"])
    assert (skipped["index"], skipped["name"]) == (sorted([*readable(images), DAMAGED]).index(DAMAGED), DAMAGED)
    assert skipped["error"].startswith("OSError") or "cannot identify" in skipped["error"], skipped


def test_the_damaged_image_is_named_and_counted_and_the_command_succeeds(trained, images, tmp_path, capsys):
    code, out, err = cl_run(capsys, "embed", trained.directory, images, "-o", tmp_path / "e.parquet")
    assert code == 0, err
    lines = err.splitlines()
    assert any(line.startswith(f"cl-run: warning: embed: skipped unreadable image {DAMAGED}: ") for line in lines), err
    assert any(line.startswith(f"cl-run: warning: embed: 1 unreadable image(s) skipped (e.g. {DAMAGED}: ") for line in lines)
    assert out == f"embeddings: {tmp_path / 'e.parquet'} (10 images x 96 backbone features)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet"]  # the parts folder is gone


def test_strict_stops_at_the_damaged_image(trained, images, tmp_path, capsys):
    code, out, err = cl_run(capsys, "embed", trained.directory, images, "-o", tmp_path / "e.parquet", "--strict")
    assert code == 2
    assert err.startswith(f"cl-run: error: embed: cannot read image {DAMAGED} (")
    assert not (tmp_path / "e.parquet").exists()


def test_nearest_neighbours_are_the_most_cosine_similar_other_rows(embedded):
    table = pq.read_table(embedded)
    x = embeddings(table).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :3]
    found = np.array(table.column("nearest").to_pylist())
    assert np.array_equal(found, expected)
    np.testing.assert_allclose(np.array(table.column("nearest_similarity").to_pylist()),
                               np.take_along_axis(similarity, expected, axis=1), atol=1e-6)


def test_an_interrupted_embedding_resumes_where_it_stopped_and_writes_the_same_file(trained, images, tmp_path, capsys,
                                                                                     monkeypatch):
    args = ["embed", trained.directory, images, "--batch-size", "2", "--part-size", "4"]
    assert cl_run(capsys, *args, "-o", tmp_path / "whole.parquet")[0] == 0
    out = tmp_path / "resumed.parquet"
    write = Parts.write

    def interrupted_after_the_first_part(parts, part, table):
        if part == 1:
            raise KeyboardInterrupt
        write(parts, part, table)

    with monkeypatch.context() as patch:
        patch.setattr(Parts, "write", interrupted_after_the_first_part)
        assert cl_run(capsys, *args, "-o", out)[0] == 130
    assert sorted(p.name for p in (tmp_path / "resumed.parquet.parts").iterdir()) == ["part-000000.parquet", "progress.json"]
    assert not out.exists()

    embedded_images = []
    forward = embed_module.Forward.__call__
    monkeypatch.setattr(embed_module.Forward, "__call__", lambda self, x: embedded_images.append(len(x)) or forward(self, x))
    code, _, err = cl_run(capsys, *args, "-o", out)
    assert code == 0, err
    assert sum(embedded_images) == 1 + 11 - 4  # the width probe, then the positions of the missing parts only
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "whole.parquet"))
    assert pq.read_schema(out).metadata == pq.read_schema(tmp_path / "whole.parquet").metadata
    assert not (tmp_path / "resumed.parquet.parts").exists()

    # Other settings never mix into an earlier embedding's parts.
    with monkeypatch.context() as patch:
        patch.setattr(Parts, "write", interrupted_after_the_first_part)
        cl_run(capsys, *args, "-o", tmp_path / "other.parquet")
    code, _, err = cl_run(capsys, "embed", trained.directory, images, "--part-size", "4", "--features", "projector",
                          "-o", tmp_path / "other.parquet")
    assert code == 2
    assert err == (f"cl-run: error: embed: {tmp_path / 'other.parquet.parts'} holds the parts of another embedding (it "
                   f"differs in features, projector_sha256); delete that folder to start over, or write this one "
                   f"elsewhere (another -o FILE)\n")


def test_an_encoder_file_and_a_hub_folder_give_the_same_table(trained, images, embedded, tmp_path, capsys):
    hub = tmp_path / "hub"
    assert cl_run(capsys, "export", trained.directory, "--hub-folder", hub)[0] == 0
    whole = pq.read_table(embedded)
    for source, kind in ((trained.directory / "encoder.safetensors", "encoder file"), (hub, "encoder file")):
        out = tmp_path / f"{source.name}.parquet"
        assert cl_run(capsys, "embed", source, images, "-o", out, "--nearest", "3")[0] == 0
        assert pq.read_table(out).equals(whole), source
        metadata = pq.read_schema(out).metadata
        assert metadata[b"encoder_sha256"] == pq.read_schema(embedded).metadata[b"encoder_sha256"]
        assert metadata[b"source_kind"].decode() == kind


def test_the_projectors_outputs(trained, images, tmp_path, capsys):
    out = tmp_path / "p.parquet"
    assert cl_run(capsys, "embed", trained.directory, images, "-o", out, "--features", "projector")[0] == 0
    table = pq.read_table(out)
    names = table.column("name").to_pylist()
    assert np.array_equal(embeddings(table), reference(trained.network, images, names, projector=True).numpy())
    assert pq.read_schema(out).metadata[b"projector_sha256"].decode() == tensors_sha256(trained.network.projector.state_dict())

    encoder = trained.directory / "encoder.safetensors"
    code, _, err = cl_run(capsys, "embed", encoder, images, "-o", out, "--features", "projector")
    assert (code, err) == (2, f"cl-run: error: embed: {encoder} is an encoder file: it holds the backbone alone; embed "
                              f"the projector's outputs from the run folder or its checkpoint\n")


def test_shards_and_a_data_set_entry(trained, images, embedded, tmp_path, capsys):
    shards = tmp_path / "shards"
    assert cl_run(capsys, "shards", images, shards, "--shard-size", "4")[0] == 0
    out = tmp_path / "shards.parquet"
    code, _, err = cl_run(capsys, "embed", trained.directory, shards, "-o", out)
    assert code == 0, err
    assert "cl-run: warning: embed: skipped unreadable image shard-0000" in err  # the damaged file, by SHARD/KEY
    table = pq.read_table(out)
    assert all(name.startswith("shard-") and "/" in name for name in table.column("name").to_pylist())
    # The same images, shuffled by `cl-run shards`: the same set of embeddings (another batch: not bit for bit).
    by_rows = lambda x: x[np.lexsort(x.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(by_rows(embeddings(table)), by_rows(embeddings(pq.read_table(embedded))), atol=1e-5)

    spec = "{name: clrun/synthetic, num_images: 6, size: 32, channels: 1}"
    assert cl_run(capsys, "embed", trained.directory, spec, "-o", out)[0] == 0
    table = pq.read_table(out)
    assert table.column_names[:2] == ["index", "label"] and len(table) == 6  # no names: rows by position
    assert json.loads(pq.read_schema(out).metadata[b"dataset"]) == yaml.safe_load(spec)


def test_bad_input_is_named(trained, images, tmp_path, capsys):
    code, _, err = cl_run(capsys, "embed", tmp_path / "nowhere", images, "-o", tmp_path / "e.parquet")
    assert (code, err) == (2, f"cl-run: error: embed: {tmp_path / 'nowhere'} does not exist; give a run folder, a "
                              f"checkpoint, an encoder file (.safetensors) or a hub folder (cl-run export --hub-folder)\n")
    code, _, err = cl_run(capsys, "embed", trained.directory, "flowers", "-o", tmp_path / "e.parquet")
    assert code == 2 and err.startswith("cl-run: error: embed: IMAGES flowers is not found; give a folder of images")
    code, _, err = cl_run(capsys, "embed", trained.directory, images, "-o", tmp_path / "e.parquet", "--nearest", "11")
    assert (code, err) == (2, f"cl-run: error: embed: --nearest 11 needs more than 11 images; {images} holds 11\n")


def test_report_draws_the_map_and_each_querys_nearest_images(trained, images, embedded, tmp_path, capsys):
    """``--report DIR``: the map of the table's rows coloured by label, and per class a query with its nearest
    other rows of the table (never itself), the thumbnails being those rows' images."""
    import torch.nn.functional as F

    from clrun.report.records import RunRecords, read_npz

    out = tmp_path / "again.parquet"
    code, printed, _ = cl_run(capsys, "embed", trained.directory, images, "-o", out, "--report", tmp_path / "pictures")
    assert code == 0 and f"report: {tmp_path / 'pictures' / 'report.md'}" in printed
    report = (tmp_path / "pictures" / "report.md").read_text(encoding="utf-8")
    assert "10 images of" in report and "](plots/embedding_map.png)" in report and "](plots/retrievals.png)" in report
    arrays = read_npz(tmp_path / "pictures" / "space.npz", RunRecords(tmp_path))
    table = pq.read_table(out)
    labels = table.column("label").to_pylist()
    assert arrays["last_points"].shape == (10, 10) and arrays["last_labels"].tolist() == labels
    assert arrays["class_names"].tolist() == ["shirts", "shoes"]
    vectors = F.normalize(torch.from_numpy(embeddings(table).copy()), dim=1)
    reader = clrun.create("dataset", "clrun/image_folder", root=str(images), size=32, channels=1)
    for row, query in enumerate(arrays["retrieval_queries"].tolist()):
        similarity = vectors[query] @ vectors.T
        similarity[query] = -2  # not its own neighbour
        expected = similarity.topk(7).indices.tolist()
        assert arrays["retrieval_labels"][row].tolist() == [labels[query]] + [labels[i] for i in expected]
        np.testing.assert_allclose(arrays["retrieval_similarity"][row], similarity.topk(7).values.numpy(), rtol=1e-5)
        name = table.column("name").to_pylist()[expected[0]]  # the image as embed read it: at the run's 32 px
        picture = reader[[f.relative_to(images).as_posix() for f in reader.files].index(name)][0][0].numpy()
        assert np.array_equal(arrays["retrieval_images"][row, 1, 0], picture)
    # One per class first (the first shirt, row 0; the first shoe, row 5), then the next rows: all ten rows.
    assert arrays["retrieval_queries"].tolist() == [0, 5, 1, 2, 3, 4, 6, 7, 8, 9]
