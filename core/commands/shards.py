"""``cl-run shards``: an image folder written as WebDataset tar shards, for ``clrun/webdataset``.

Each shard holds ``shard_size`` images as they are on disk (no re-encoding: the reader decodes and sizes
them as ``clrun/image_folder`` does), under keys numbered in write order, with the class index as ``cls``
when the folder has one subfolder per class. The images are shuffled before writing: a reader's shuffle
buffer mixes only nearby images, and a folder's order is by class. ``index.json`` is written last and
lists every shard with its image count and the classes: ``clrun/webdataset`` reads the epoch size from
it, and a folder without it is an unfinished write.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

from clrun.errors import UserError
from clrun.image_files import DEFAULT_EXTENSIONS, find_images
from clrun.storage import discard, elsewhere, make_folder, write_atomic, writing

INDEX = "index.json"
PATTERN = "shard-%06d.tar"
# A disk fault's fix: the output folder is the one thing to change.
SHARDS_ELSEWHERE = "write the shards to {place} instead (another OUTPUT)"


def write_shards(source: str | Path, out: str | Path, shard_size: int = 1000, seed: int = 0,
                 progress: bool | None = None) -> dict[str, Any]:
    """Write the images under ``source`` into shards in ``out`` (a new or empty folder); returns the index."""
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if shard_size < 1:
        raise UserError(f"cl-run shards: --shard-size must be at least 1, got {shard_size}")
    if not source.is_dir():
        raise UserError(f"cl-run shards: {source} is not a folder of images")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"cl-run shards: {out} is not empty; give a new or empty folder for the shards")
    files = find_images(source, DEFAULT_EXTENSIONS)
    if not files:
        raise UserError(f"cl-run shards: no images in {source} (searched {', '.join(DEFAULT_EXTENSIONS)}, case-insensitive)")
    classes = class_folders(files)
    random.Random(seed).shuffle(files)
    created = not out.exists()
    with elsewhere(SHARDS_ELSEWHERE):
        make_folder(out, "shards")
        try:
            with writing(out, "shards"):
                counts = write_tars(source, files, classes, out, shard_size,
                                    sys.stderr.isatty() if progress is None else progress)
            index = {"format": "webdataset", "images": len(files), "classes": classes,
                     "shards": [{"url": PATTERN % k, "images": n} for k, n in enumerate(counts)]}
            write_atomic(out / INDEX, json.dumps(index, indent=1) + "\n", "shards")
        except BaseException:
            clear(out, created)  # a folder without its index is an unfinished write: leave none
            raise
    return index


def write_tars(source: Path, files: list[Path], classes: list[str], out: Path, shard_size: int,
               show: bool) -> list[int]:
    """The images in ``files`` (relative to ``source``) as tar shards in ``out``; the images per shard."""
    import webdataset
    from tqdm import tqdm

    counts: list[int] = []
    with webdataset.ShardWriter(str(out / PATTERN), maxcount=shard_size, verbose=0) as sink:
        for i, relative in enumerate(tqdm(files, desc="shards", unit="image", disable=not show)):
            sample = {"__key__": f"{i:09d}", relative.suffix.lower().lstrip("."): (source / relative).read_bytes()}
            if classes:
                sample["cls"] = classes.index(relative.parts[0])
            sink.write(sample)
            if i % shard_size == 0:
                counts.append(0)
            counts[-1] += 1
    return counts


def clear(out: Path, created: bool) -> None:
    """Best effort, after a failed write: remove what was written into ``out`` (new or empty before)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in out.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            discard(path)


def class_folders(files: list[Path]) -> list[str]:
    """The classes when every image lies in a first-level subfolder and there are two or more of them
    (the ImageNet layout), in alphabetical order; else none."""
    if any(len(f.parts) < 2 for f in files):
        return []
    names = sorted({f.parts[0] for f in files})
    return names if len(names) >= 2 else []
