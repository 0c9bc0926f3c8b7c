"""How ``cl-run embed`` survives an interruption: the table is written as part files, then combined.

A Parquet file cannot be appended to in place (its footer, which indexes the row groups, is written last), so
the images are embedded part by part, ``part_size`` positions each, into a work folder beside the output
(``FILE.parts/``). Each part file is written atomically, so one that exists is complete: the parts present
*are* the progress. ``progress.json``, written first, records what the parts are of (encoder hash, output,
preprocessing, images, count, part size); a rerun with the same settings embeds only the missing parts, and
one with other settings is refused rather than mixed in. When every part is there, ``combine`` streams them
into the output (atomically too, with the nearest neighbours when asked) and removes the work folder.

Part files hold ``index``, ``name`` (where the images have names), ``label`` (null: unlabeled) and
``embedding``; the images a part could not read are listed in its schema metadata (``skipped``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from clrun.errors import UserError
from clrun.storage import TEMP_SUFFIX, discard, make_folder, remove, remove_if_empty, write_atomic

PROGRESS = "progress.json"
FORMAT = "clrun-embed-parts/1"


def work_folder(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


class Parts:
    """The work folder of one output file: which parts exist, writing one, combining them."""

    def __init__(self, out: Path, identity: dict[str, Any], count: int, part_size: int) -> None:
        self.out, self.folder = out, work_folder(out)
        self.count, self.part_size = count, part_size
        self.record = {"format": FORMAT, "count": count, "part_size": part_size, "identity": identity}

    def open(self) -> int:
        """Create the work folder, or take up the one a earlier run left; returns the parts already done."""
        progress = self.folder / PROGRESS
        if progress.is_file():
            self._check_same(progress)
            for stale in self.folder.glob(f".*{TEMP_SUFFIX}"):  # what a killed writer left
                discard(stale)
            return len(self.done())
        created = not self.folder.exists()
        try:
            make_folder(self.folder, "embed")
            write_atomic(progress, json.dumps(self.record, indent=1) + "\n", "embed")
        except BaseException:
            if created:
                remove_if_empty(self.folder)
            raise
        return 0

    def _check_same(self, progress: Path) -> None:
        try:
            saved = json.loads(progress.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"embed: {progress} cannot be read ({type(exc).__name__}: {exc}); delete {self.folder} to "
                            f"start over") from None
        if saved == self.record:
            return
        old, new = saved.get("identity", {}), self.record["identity"]
        differ = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        differ += [k for k in ("count", "part_size", "format") if saved.get(k) != self.record[k]]
        raise UserError(f"embed: {self.folder} holds the parts of another embedding (it differs in {', '.join(differ)}); "
                        f"delete that folder to start over, or write this one elsewhere (another -o FILE)")

    @property
    def parts(self) -> int:
        return -(-self.count // self.part_size)

    def positions(self, part: int) -> range:
        return range(part * self.part_size, min((part + 1) * self.part_size, self.count))

    def file(self, part: int) -> Path:
        return self.folder / f"part-{part:06d}.parquet"

    def done(self) -> list[int]:
        return [k for k in range(self.parts) if self.file(k).is_file()]

    def missing(self) -> list[int]:
        return [k for k in range(self.parts) if not self.file(k).is_file()]

    def write(self, part: int, table) -> None:
        import pyarrow.parquet as pq

        write_atomic(self.file(part), lambda tmp: pq.write_table(table, str(tmp)), "embed")

    def skipped(self) -> list[dict[str, Any]]:
        """Every image the parts could not read: position, name, error."""
        import pyarrow.parquet as pq

        found: list[dict[str, Any]] = []
        for k in range(self.parts):
            metadata = pq.read_schema(str(self.file(k))).metadata or {}
            found += json.loads(metadata.get(b"skipped", b"[]"))
        return found

    def combine(self, metadata: dict[str, str], extra_columns: Optional[Callable[[Any], dict[str, Any]]] = None) -> Path:
        """Write the output from the parts (``extra_columns(table)``: more columns, the nearest neighbours, given
        the whole table's embeddings), then remove the work folder."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = [self.file(k) for k in range(self.parts)]
        labelled = any(pq.read_table(str(f), columns=["label"]).column("label").null_count
                       < pq.read_metadata(str(f)).num_rows for f in files)
        added = extra_columns(pa.concat_tables(pq.read_table(str(f), columns=["embedding"]) for f in files)) \
            if extra_columns is not None else {}

        def write(tmp: Path) -> None:
            writer, row = None, 0
            try:
                for f in files:
                    table = pq.read_table(str(f)).replace_schema_metadata(None)
                    if not labelled:  # no image has a label: no label column
                        table = table.drop_columns(["label"])
                    for name, column in added.items():
                        table = table.append_column(name, column.slice(row, table.num_rows))
                    row += table.num_rows
                    if writer is None:
                        writer = pq.ParquetWriter(str(tmp), table.schema.with_metadata(metadata))
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()

        write_atomic(self.out, write, "embed")
        for f in [*files, self.folder / PROGRESS]:
            remove(f, "embed")
        remove_if_empty(self.folder)
        return self.out
