"""``cl-run embed SOURCE IMAGES -o FILE.parquet``: every image through a trained encoder, into a table.

SOURCE is a run folder, a checkpoint, an encoder file or a hub folder (``clrun.commands.encoder_source``);
IMAGES a folder, shards or any data set entry (``clrun.commands.embed_images``). The images get the
preprocessing the run's evaluators give them (``Run.preprocess``), are embedded batch by batch on the device,
and go into a Parquet file with one row per readable image:

    index      int64                       the image's position in IMAGES's order
    name       string                      its path in the folder (SHARD/KEY for shards), where it has one
    label      int64, null if unlabeled    only where some image has a label (class subfolders)
    embedding  fixed_size_list<float32>[D] the backbone's pooled features, or the projector's outputs
    nearest             fixed_size_list<int64>[K]    with --nearest K: the rows of this file most similar...
    nearest_similarity  fixed_size_list<float32>[K]  ...and their cosine similarities, most similar first

The schema's metadata records the provenance (``provenance``): the encoder's hash, the recipe, which output,
the preprocessing, the images, and every image that could not be read.

An unreadable image is named on stderr as it is met (the first ``NAMED``), skipped, counted, and listed in
the metadata (``skipped``: position, name, error); the command still succeeds (exit 0) and ends with a
warning line giving the count: one damaged photo in a million should not cost the other embeddings, and
never goes unnoticed. ``--strict`` stops at the first one instead (exit 2, the parts written so far kept).

Interrupted (Ctrl-C, a lost node), a rerun of the same command embeds only what is missing
(``clrun.commands.embed_parts``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from clrun.commands.embed_images import Images, open_images
from clrun.commands.embed_parts import Parts
from clrun.commands.encoder_source import Source, open_source, tensors_sha256
from clrun.commands.nearest import nearest as nearest_rows
from clrun.errors import UserError
from clrun.storage import elsewhere
from clrun.version import __version__

NAMED = 10  # unreadable images named on stderr as they are met; the rest are counted (and in the metadata)
EMBED_ELSEWHERE = "write the embeddings to {place} instead (another -o FILE)"
FEATURES = ("backbone", "projector")


@dataclass
class Embedded:
    """What ``embed`` wrote: the file, its rows and width, the images it skipped."""

    file: Path
    rows: int
    dim: int
    skipped: list[dict[str, Any]]


def embed(source: str | Path, images: str, out: str | Path, *, features: str = "backbone", nearest: int = 0,
          batch_size: int = 256, workers: Optional[int] = None, device: str = "auto", part_size: int = 10_000,
          strict: bool = False, progress: Optional[bool] = None, report: str | Path | None = None) -> Embedded:
    """Embed ``images`` with ``source``'s encoder into the Parquet file ``out`` (see the module's text).

    ``features``: "backbone" or "projector"; ``nearest``: K neighbours per image (0: none); ``workers``:
    decoding processes (default: the recipe's ``data.num_workers``); ``part_size``: images per part file;
    ``strict``: an unreadable image is an error; ``progress``: a progress bar (default: on a terminal);
    ``report``: a folder for the pictures of the embedding space (``clrun.commands.embed_report``)."""
    require_pyarrow()
    for flag, value, least in (("--batch-size", batch_size, 1), ("--part-size", part_size, 1), ("--nearest", nearest, 0),
                               ("--workers", 0 if workers is None else workers, 0)):
        if value < least:
            raise UserError(f"embed: {flag} must be at least {least}, got {value}")
    if features not in FEATURES:
        raise UserError(f"embed: features must be one of {', '.join(FEATURES)}, not {features!r}")
    out = Path(out).expanduser()
    opened = open_source(source, embed_device(device), "embed")
    if features == "projector" and not opened.has_projector:
        raise UserError(f"embed: {opened.path} is an encoder file: it holds the backbone alone; embed the projector's "
                        f"outputs from the run folder or its checkpoint")
    pre = opened.preprocessing()
    found = open_images(images, max(pre["size"]), opened.channels)
    count = len(found)
    if count == 0:
        raise UserError(f"embed: {images} holds no images")
    if nearest >= count:
        raise UserError(f"embed: --nearest {nearest} needs more than {nearest} images; {images} holds {count}")
    forward = Forward(opened, features)
    identity = {"encoder_sha256": tensors_sha256(opened.encoder_tensors()), "features": features,
                "preprocessing": pre, "dataset": found.spec, "count": count}
    if features == "projector":
        identity["projector_sha256"] = tensors_sha256(opened.run.network.projector.state_dict())
    parts = Parts(out, identity, count, part_size)
    with elsewhere(EMBED_ELSEWHERE):
        parts.open()
        embed_parts(parts, found, forward, batch_size, opened.recipe.data.num_workers if workers is None else workers,
                    strict, sys.stderr.isatty() if progress is None else progress)
        skipped = parts.skipped()
        metadata = provenance(opened, identity, images, found, skipped, nearest)
        extra = neighbour_columns(nearest, opened.run.device) if nearest else None
        parts.combine(metadata, extra)
    if report is not None:
        from clrun.commands.embed_report import write_embed_report

        with elsewhere("write the report to {place} instead (another --report DIR)"):
            write_embed_report(out, found, Path(report).expanduser())
    if skipped:
        first = skipped[0]
        print(f"cl-run: warning: embed: {len(skipped)} unreadable image(s) skipped (e.g. {first['name']}: "
              f"{first['error']}); the file's metadata `skipped` lists each (--strict stops at the first instead)",
              file=sys.stderr, flush=True)
    return Embedded(out, count - len(skipped), forward.dim, skipped)


class Forward:
    """A uint8 batch to its embeddings (float32, on the CPU): the run's evaluation preprocessing, the backbone,
    and the projector when asked. fp32 on every device: the evaluators keep bf16 on a GPU to save memory, but a
    table that people search, compare and hash keeps full precision."""

    def __init__(self, source: Source, features: str) -> None:
        self.run, self.channels, self.projector = source.run, source.channels, features == "projector"
        height, width = source.run.parts.eval_size
        self.dim = int(self(torch.zeros(1, self.channels, height, width, dtype=torch.uint8)).shape[1])

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.channels:
            raise UserError(f"embed: the images have {images.shape[1]} channel(s), the encoder takes {self.channels}; "
                            f"give the data set channels: {self.channels}")
        network = self.run.network
        features = network.backbone(self.run.preprocess(images))
        if self.projector:
            features = network.projector(features)
        return features.float().cpu()


def embed_parts(parts: Parts, found: Images, forward: Forward, batch_size: int, workers: int, strict: bool,
                show: bool) -> None:
    """Embed the missing parts, writing each as soon as it is complete."""
    from tqdm import tqdm

    missing = parts.missing()
    batches = [list(r[i:i + batch_size]) for r in map(parts.positions, missing) for i in range(0, len(r), batch_size)]
    todo = sum(len(parts.positions(k)) for k in missing)
    named = [0]
    rows = Rows()
    with tqdm(total=parts.count, initial=parts.count - todo, desc="embed", unit="image", disable=not show,
              file=sys.stderr) as bar:
        for wanted, batch in zip(batches, found.batches(batches, workers)):
            for position, error in batch.failed:
                rows.skip(position, found.name(position), error, strict, named)
            if batch.images is not None:
                rows.add(batch.positions, [found.name(i) for i in batch.positions], batch.labels, forward(batch.images))
            bar.update(len(wanted))
            part = wanted[0] // parts.part_size
            if wanted[-1] == parts.positions(part)[-1]:  # the part's last batch
                parts.write(part, rows.table(found.named, forward.dim))
                rows = Rows()


class Rows:
    """One part's rows as they are embedded, and the images it skipped."""

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.names: list[Optional[str]] = []
        self.labels: list[int] = []
        self.embeddings: list[np.ndarray] = []
        self.skipped: list[dict[str, Any]] = []

    def add(self, positions: list[int], names: list[Optional[str]], labels: list[int], embeddings: torch.Tensor) -> None:
        self.positions += positions
        self.names += names
        self.labels += labels
        self.embeddings.append(embeddings.numpy())

    def skip(self, position: int, name: Optional[str], error: str, strict: bool, named: list[int]) -> None:
        name = name if name is not None else f"#{position}"
        if strict:
            raise UserError(f"embed: cannot read image {name} ({error}); remove or replace it, or run without --strict "
                            f"to skip unreadable images and count them")
        self.skipped.append({"index": position, "name": name, "error": error})
        named[0] += 1
        if named[0] <= NAMED:
            more = " (further unreadable images are skipped without a message)" if named[0] == NAMED else ""
            print(f"cl-run: warning: embed: skipped unreadable image {name}: {error}{more}", file=sys.stderr, flush=True)

    def table(self, named: bool, dim: int):
        import pyarrow as pa

        flat = np.concatenate(self.embeddings).reshape(-1) if self.embeddings else np.zeros(0, np.float32)
        columns = {"index": pa.array(self.positions, pa.int64())}
        if named:
            columns["name"] = pa.array(self.names, pa.string())
        columns["label"] = pa.array([y if y >= 0 else None for y in self.labels], pa.int64())
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
        return pa.table(columns).replace_schema_metadata({"skipped": json.dumps(self.skipped)})


def neighbour_columns(k: int, device: torch.device) -> Callable[[Any], dict[str, Any]]:
    """The ``nearest`` and ``nearest_similarity`` columns of a table's embeddings."""
    import pyarrow as pa

    def columns(table) -> dict[str, Any]:
        if len(table) <= k:
            raise UserError(f"embed: --nearest {k} needs more than {k} readable images; {len(table)} could be read")
        column = table.column("embedding").combine_chunks()
        dim = column.type.list_size
        embeddings = torch.from_numpy(np.array(column.flatten().to_numpy(zero_copy_only=False)).reshape(-1, dim))
        indices, similarities = nearest_rows(embeddings, k, device)
        return {"nearest": pa.FixedSizeListArray.from_arrays(pa.array(indices.reshape(-1).numpy(), pa.int64()), k),
                "nearest_similarity": pa.FixedSizeListArray.from_arrays(
                    pa.array(similarities.reshape(-1).numpy(), pa.float32()), k)}

    return columns


def provenance(opened: Source, identity: dict[str, Any], images: str, found: Images, skipped: list[dict[str, Any]],
               nearest: int) -> dict[str, str]:
    """The output's schema metadata: where its embeddings come from and how they were made (all strings)."""
    metadata = {
        "clrun_version": __version__,
        "source": str(opened.path.resolve()), "source_kind": opened.kind, "position": json.dumps(opened.position),
        "backbone": opened.recipe.backbone.name,
        "encoder_sha256": identity["encoder_sha256"], "features": identity["features"],
        "preprocessing": json.dumps(identity["preprocessing"]), "recipe": opened.recipe_text,
        "images": images, "dataset": json.dumps(found.spec), "count": str(identity["count"]),
        "skipped": json.dumps(skipped),
    }
    if "projector_sha256" in identity:
        metadata["projector_sha256"] = identity["projector_sha256"]
    if found.classes:
        metadata["classes"] = json.dumps(found.classes)
    if nearest:
        metadata.update(nearest=str(nearest), nearest_similarity="cosine")
    return metadata


def embed_device(name: str) -> torch.device:
    """``--device``: "auto" is a GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"embed: --device {name} is not a device; give auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"embed: --device {name}: no CUDA device is available here; use --device cpu or auto")
    return device


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError("embed: writing Parquet needs pyarrow, which is not installed: pip install 'cl-run[embed]'") from None
