"""The images ``cl-run embed`` reads: a folder, shards, or any data set a recipe can name, in a fixed order,
in batches of given positions, with each unreadable image set aside (named) rather than replaced.

IMAGES is one of:

- a folder of images (``clrun/image_folder``: searched recursively, one subfolder per class gives labels),
  served at the encoder's input size and channels; rows are named by the file's path in the folder;
- a folder of shards written by ``cl-run shards`` (``clrun/webdataset``, read in one fixed order, without
  shuffling); rows are named ``SHARD/KEY``;
- a data set entry as a recipe writes it, in YAML (inline ``'{name: NAME, arg: value}'``, or a .yaml file
  holding the mapping); rows are named by position unless the data set lists its ``files``.

A position is an image's place in that order: what makes a rerun pick up exactly what is missing. A data set
that substitutes another image for an unreadable one (``on_error: skip``) would shift names against
embeddings, so unreadable images are caught here, per image: the batch goes on without it, and its position,
name and error are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from clrun.api import create
from clrun.commands.shards import INDEX
from clrun.errors import DataError, UserError
from clrun.streams import Stream

FOLDER, SHARDS = "clrun/image_folder", "clrun/webdataset"
# What a data set raises for one image it cannot read: its own DataError, or a decoder's OSError (PIL's
# UnidentifiedImageError and truncated files are OSErrors). Anything else is a bug, and is not caught.
UNREADABLE = (DataError, OSError)
SPEC_HELP = ("a folder of images, a folder of shards (cl-run shards), or a data set as YAML, e.g. "
             "'{name: clrun/image_folder, root: /data/val, size: 224}' or a .yaml file holding such a mapping")


@dataclass
class Batch:
    """The readable images of some positions, and the unreadable ones with their errors."""

    positions: list[int]
    images: Optional[torch.Tensor]  # uint8 (B, C, H, W); None when none of the positions could be read
    labels: list[int]  # -1: unlabeled
    failed: list[tuple[int, str]] = field(default_factory=list)  # (position, error)


class Images:
    """A data set opened for embedding: ``len``, ``name(i)``, ``classes`` and ``batches``."""

    def __init__(self, dataset: Dataset, spec: dict[str, Any]) -> None:
        self.dataset, self.spec = dataset, spec
        self.streamed = isinstance(dataset, Stream)
        files, root = getattr(dataset, "files", None), getattr(dataset, "root", None)
        self.files: Optional[list[str]] = None
        if isinstance(files, list) and not self.streamed:
            self.files = [Path(f).relative_to(root).as_posix() if root else str(f) for f in files]
        self.stream_names: dict[int, str] = {}  # filled as a stream is read
        classes = getattr(dataset, "classes", None)
        self.classes: Optional[list[str]] = [str(c) for c in classes] if classes else None

    def __len__(self) -> int:
        return int(self.dataset.epoch_size) if self.streamed else len(self.dataset)

    @property
    def named(self) -> bool:
        """Whether rows have names (file paths, shard keys) beside their positions."""
        return self.files is not None or self.streamed

    def name(self, position: int) -> Optional[str]:
        if self.files is not None:
            return self.files[position]
        return self.stream_names.get(position)

    def batches(self, positions: list[list[int]], workers: int) -> Iterator[Batch]:
        """A ``Batch`` for each list of positions, in order (each list ascending)."""
        if self.streamed:
            yield from self._stream_batches(positions)
            return
        loader = DataLoader(Guarded(self.dataset), batch_sampler=positions, num_workers=workers, collate_fn=collate,
                            generator=torch.Generator())  # a private generator: the global one stays untouched
        yield from loader

    def _stream_batches(self, positions: list[list[int]]) -> Iterator[Batch]:
        """A stream read in this process: its records in the order of reader 0 of 1 (fixed by the seed), those
        before a wanted position skipped undecoded (a stream's records are cheap to skip)."""
        records = iter(self.dataset.records(0, 1, 0))
        at = 0  # the position of the next record
        for wanted in positions:
            readable, failed = [], []
            for position in wanted:
                for _ in range(position - at + 1):
                    record = next(records, None)
                    if record is None:
                        raise DataError(f"embed: {self.dataset.name} ended at image {at}, before the {len(self)} "
                                        f"images it says it holds")
                    at += 1
                self.stream_names[position] = record_name(record, position)
                try:
                    image, label = self.dataset.decode(record)
                except UNREADABLE as exc:
                    failed.append((position, error_text(exc)))
                    continue
                readable.append((position, image, label_of(label)))
            yield Batch([i for i, _, _ in readable], torch.stack([x for _, x, _ in readable]) if readable else None,
                        [y for _, _, y in readable], failed)


def record_name(record: Any, position: int) -> str:
    """A streamed record's name: ``SHARD/KEY`` for a WebDataset sample, else its position."""
    if isinstance(record, dict) and "__key__" in record:
        return f"{Path(str(record.get('__url__', ''))).name}/{record['__key__']}"
    return str(position)


class Guarded(Dataset):
    """``dataset[i]`` as ``(i, image, label, None)``, or ``(i, None, -1, error)`` for an image it cannot read."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Optional[torch.Tensor], int, Optional[str]]:
        try:
            item = self.dataset[i]
        except UNREADABLE as exc:
            return i, None, -1, error_text(exc)
        return i, torch.as_tensor(item[0]), label_of(item[1]), None


def collate(items: list[tuple[int, Optional[torch.Tensor], int, Optional[str]]]) -> Batch:
    readable = [(i, image, label) for i, image, label, error in items if error is None]
    return Batch([i for i, _, _ in readable], torch.stack([image for _, image, _ in readable]) if readable else None,
                 [label for _, _, label in readable], [(i, error) for i, _, _, error in items if error is not None])


def label_of(label: Any) -> int:
    """One class per image, or -1 (unlabeled, or a label map: a table row has one label)."""
    value = torch.as_tensor(label)
    return int(value) if value.numel() == 1 else -1


def error_text(exc: BaseException) -> str:
    """The decoder's own words where a data set wrapped them (they name the file), else the data set's."""
    cause = exc.__cause__ if isinstance(exc, DataError) and exc.__cause__ is not None else exc
    return f"{type(cause).__name__}: {cause}"


def open_images(images: str, size: int, channels: int) -> Images:
    """``images`` (see the module's text) as a data set; a folder is served at ``size`` and ``channels``."""
    spec = image_spec(images, size, channels)
    args = {k: v for k, v in spec.items() if k != "name"}
    return Images(create("dataset", spec["name"], **args), spec)


def image_spec(images: str, size: int, channels: int) -> dict[str, Any]:
    path = Path(images).expanduser()
    if path.is_dir():  # by its absolute path: a rerun from another folder resumes the same embedding
        if (path / INDEX).is_file():  # written by `cl-run shards`
            return {"name": SHARDS, "urls": str(path.resolve()), "shuffle": 0, "size": size, "channels": channels}
        return {"name": FOLDER, "root": str(path.resolve()), "size": size, "channels": channels}
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        text, where = path.read_text(encoding="utf-8"), str(path)
    elif images.lstrip().startswith("{"):
        text, where = images, "IMAGES"
    else:
        raise UserError(f"embed: IMAGES {images} is {'not a folder' if path.exists() else 'not found'}; give {SPEC_HELP}")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"embed: {where} is not valid YAML ({' '.join(str(exc).split())}); give {SPEC_HELP}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise UserError(f"embed: {where} is not a data set entry (a mapping with a name); give {SPEC_HELP}")
    return spec
