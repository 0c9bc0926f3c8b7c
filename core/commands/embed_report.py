"""``cl-run embed ... --report DIR``: the pictures of the embedded images' space, as a run's report has them
(``clrun.space``, ``clrun.report.space_plots``): a map of a fixed sample of up to 3,000 rows of the table, coloured
by label where the images have labels, and a retrieval grid, ten query images (one per class where labeled, else
the first ten) with their nearest other images of the table. Written to ``DIR`` as a run folder has them
(``RunFolder``'s report, plots and space files: the arrays drawn).

A streamed data set (shards) cannot be read by position: its report has the map and no grid.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clrun import space
from clrun.commands.embed_images import Images
from clrun.report.plots import save_figure
from clrun.report.space_plots import embedding_map_figure, retrieval_figure
from clrun.run_folder import RunFolder
from clrun.storage import make_folder, write_atomic

PLOTS = {"embedding_map": ("Embedding map", embedding_map_figure),
         "retrievals": ("Nearest neighbours", retrieval_figure)}


def write_embed_report(table_file: Path, found: Images, out: Path) -> Path:
    """Draw the pictures of the Parquet table ``table_file``, whose rows are ``found``'s images; returns the
    report's path."""
    import pyarrow.parquet as pq

    table = pq.read_table(table_file)
    column = table.column("embedding").combine_chunks()
    embeddings = torch.from_numpy(np.array(column.flatten().to_numpy(zero_copy_only=False)).reshape(len(table), -1))
    labels = torch.tensor([-1 if y is None else int(y) for y in table.column("label").to_pylist()])
    positions = table.column("index").to_pylist()
    chosen = space.map_indices(len(table))
    arrays: dict[str, Any] = {"last_points": space.principal_components(embeddings[chosen]),
                              "last_labels": labels[chosen].numpy(), "last_title": np.array("embedded images")}
    if found.classes:
        arrays["class_names"] = np.array(found.classes)
    if not found.streamed and len(table) > 1:
        arrays.update(retrievals(found, positions, embeddings, labels))
    folder = RunFolder(make_folder(Path(out), "embed --report"))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(folder.space, buffer.getvalue(), "embed --report")
    blocks = []
    for name, (heading, draw) in PLOTS.items():
        figure = draw(arrays)
        if figure is None:
            continue
        path = folder.plots / f"{name}.png"
        save_figure(figure, path)
        blocks.append(f"## {heading}\n\n![{heading}]({Path(os.path.relpath(path, folder.path)).as_posix()})")
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    lines = [f"# Embeddings: `{Path(table_file).name}`", "",
             f"{len(table)} images of `{metadata.get('images', '?')}`, {metadata.get('features', 'backbone')} features "
             f"({embeddings.shape[1]} wide) of `{metadata.get('source', '?')}` (encoder SHA-256 "
             f"`{metadata.get('encoder_sha256', '?')[:12]}`).", ""]
    report = "\n".join(lines) + "\n" + "\n\n".join(blocks) + "\n"
    return write_atomic(folder.report, report, "embed --report")


def retrievals(found: Images, positions: list[int], embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The retrieval grid's arrays: queries among the table's rows, their nearest other rows."""
    def image(row: int) -> torch.Tensor:
        return found.dataset[positions[row]][0]

    return space.retrieval_grid(embeddings, labels, image, embeddings, labels, image, same_set=True)
