"""Images from a Hugging Face ``datasets`` data set on local disk: a folder written by
``Dataset.save_to_disk``, or Parquet files. Read with random access (the loop's sampler, as for an image
folder), or as a stream (``streaming: true``): each process and loader worker reads its own Parquet files
or rows, split with ``datasets.distributed.split_dataset_by_node`` (``clrun.Stream``). No download: the
hub is never asked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional

import torch
from torch.utils.data import Dataset

from clrun import ComponentError, DataError, DataNotFoundError, Range, Stream, checked
from clrun.plugins.datasets.decode import DECODE_ERRORS, square_image, to_tensor

NAME = "clrun/hf_dataset"


@checked
def hf_dataset(
    path: Optional[str] = None,
    split: str = "train",
    image_column: str = "image",
    label_column: Optional[str] = "label",
    size: Annotated[int, Range(min=1)] = 224,
    channels: Literal[1, 3] = 3,
    streaming: bool = False,
    shuffle: Annotated[int, Range(min=0, hint="rows in the shuffle buffer; 0: the files' order")] = 1000,
    epoch_size: Optional[Annotated[int, Range(min=1, hint="default: every row")]] = None,
):
    """A Hugging Face data set of images from local disk.

    path:          a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), a folder of
                   ``.parquet`` files (searched recursively), or one Parquet file.
    split:         the split of a ``DatasetDict`` folder (ignored for a single ``Dataset`` and Parquet).
    image_column:  an ``Image`` feature (or a column of encoded image bytes).
    label_column:  the class column; null (or a data set without it) serves -1.
    size, channels: as ``clrun/image_folder``: the shorter side resized to ``size``, center-cropped.
    streaming:     Parquet only: read as a stream split over processes and loader workers, instead of
                   converting the files to an Arrow cache first (minutes for ImageNet, and its size on disk).
    shuffle:       streaming: the shuffle buffer in rows (0: the files' order).
    epoch_size:    streaming: rows in one epoch; default: all rows (from the Parquet footers).
    """
    try:
        import datasets  # noqa: F401  (an optional dependency: say how to get it)
    except ImportError:
        raise ComponentError(f"{NAME} needs the Hugging Face `datasets` package: pip install 'cl-run[hf]'") from None
    shape = (channels, size, size)
    if path is None:
        raise DataNotFoundError(f"{NAME}: no data set given: set data.dataset.path to a save_to_disk folder or "
                                f"Parquet files", expected_shape=shape)
    root = Path(path).expanduser()
    if not root.exists():
        raise DataNotFoundError(f"{NAME}: {root} does not exist", expected_shape=shape)
    columns = Columns(image_column, label_column, size, "L" if channels == 1 else "RGB")
    if streaming:
        return HFStream(parquet_files(root), columns, shuffle, epoch_size)
    return HFImages(load_map_style(root, split), columns)


class Columns:
    """Which columns hold the image and the label, and how an image is served."""

    def __init__(self, image: str, label: Optional[str], size: int, mode: str) -> None:
        self.image, self.label, self.size, self.mode = image, label, size, mode

    def check(self, names: list[str], where: str) -> None:
        if self.image not in names:
            raise ComponentError(f"{NAME}: {where} has no column {self.image!r} (its columns: {names}); set "
                                 f"data.dataset.image_column", argument="image_column")
        if self.label is not None and self.label not in names:
            self.label = None  # unlabeled data: -1

    def decode(self, row: dict[str, Any], where: str) -> tuple[torch.Tensor, int]:
        value = row[self.image]
        data = value.get("bytes") if isinstance(value, dict) else value
        if data is None and isinstance(value, dict) and value.get("path"):
            data = Path(value["path"]).read_bytes()
        try:
            image = square_image(io.BytesIO(data), self.size, self.mode)
        except (*DECODE_ERRORS, TypeError) as exc:
            raise DataError(f"{NAME}: {where}: column {self.image!r} is not a readable image "
                            f"({type(exc).__name__}: {exc})") from exc
        label = row.get(self.label) if self.label else None
        return to_tensor(image), -1 if label is None else int(label)


def undecoded(dataset, column: str):
    """``dataset`` with ``column`` as encoded bytes: decoded and sized here, as every cl-run reader does."""
    import datasets

    if isinstance(dataset.features.get(column), datasets.Image):
        return dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def load_map_style(root: Path, split: str):
    import datasets

    if root.is_dir() and ((root / "state.json").is_file() or (root / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(root))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ComponentError(f"{NAME}: {root} has no split {split!r} (it has {sorted(loaded)}); set data.dataset.split",
                                     argument="split")
            loaded = loaded[split]
        return loaded
    return datasets.load_dataset("parquet", data_files=[str(f) for f in parquet_files(root)], split="train")


def parquet_files(root: Path) -> list[Path]:
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    if not files:
        raise DataNotFoundError(f"{NAME}: no .parquet files in {root}, and it is not a save_to_disk folder "
                                f"(no state.json or dataset_dict.json)")
    return files


class HFImages(Dataset):
    """A map-style data set: random access through the loop's sampler."""

    def __init__(self, dataset, columns: Columns) -> None:
        columns.check(list(dataset.column_names), "the data set")
        self.dataset, self.columns = undecoded(dataset, columns.image), columns
        self.image_shape = (1 if columns.mode == "L" else 3, columns.size, columns.size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.columns.decode(self.dataset[int(i)], f"row {i}")


class HFStream(Stream):
    """Parquet files read as a stream (``datasets``' streaming mode)."""

    name = NAME

    def __init__(self, files: list[Path], columns: Columns, shuffle: int, epoch_size: Optional[int]) -> None:
        import datasets
        import pyarrow.parquet

        self.files, self.columns, self.shuffle = [str(f) for f in files], columns, shuffle
        self.image_shape = (1 if columns.mode == "L" else 3, columns.size, columns.size)
        rows = sum(pyarrow.parquet.ParquetFile(f).metadata.num_rows for f in self.files)
        self.epoch_size = int(epoch_size if epoch_size is not None else rows)
        self.stream = datasets.load_dataset("parquet", data_files=self.files, split="train", streaming=True)
        columns.check(list(self.stream.column_names or []), f"{self.files[0]}")
        self.stream = undecoded(self.stream, columns.image)
        self.where = f"a row of {self.files[0]}" if len(self.files) == 1 else f"a row of {len(self.files)} Parquet files"

    def records(self, reader: int, readers: int, seed: int) -> Iterator[dict[str, Any]]:
        from datasets.distributed import split_dataset_by_node

        part = split_dataset_by_node(self.stream, rank=reader, world_size=readers)
        if self.shuffle:
            part = part.shuffle(seed=seed % 2**32, buffer_size=self.shuffle)
        for cycle in range(1 << 62):  # a reader's share may be shorter than an epoch needs: go round again
            part.set_epoch(cycle)
            # .iter(), not iter(): inside a loader worker, iter() would split the rows over the workers
            # again (datasets does that for the torch DataLoader); cl-run has already split them.
            for batch in part.iter(batch_size=1):
                yield {k: v[0] for k, v in batch.items()}

    def decode(self, record: dict[str, Any]) -> tuple[torch.Tensor, int]:
        return self.columns.decode(record, self.where)
