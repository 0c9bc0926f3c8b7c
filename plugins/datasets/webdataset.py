"""Images from WebDataset tar shards (``cl-run shards`` writes them), read as a stream: each process and
loader worker reads its own shards sequentially (``clrun.Stream``), through a shuffle buffer."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional, Union

import torch

from clrun import ComponentError, DataError, DataNotFoundError, Range, Stream, checked
from clrun.plugins.datasets.decode import DECODE_ERRORS, square_image, to_tensor

NAME = "clrun/webdataset"
INDEX = "index.json"  # what `cl-run shards` writes next to its shards
IMAGE_KEYS = "jpg;jpeg;png;webp;bmp;tif;tiff"


@checked
class WebDataset(Stream):
    """Images (and optional labels) from tar shards in the WebDataset layout.

    urls:        a folder written by ``cl-run shards`` (its ``index.json`` lists the shards and their
                 image counts), or shard URLs: a brace pattern (``/data/train-{000000..000146}.tar``), a
                 list, ``pipe:COMMAND`` (``pipe:aws s3 cp s3://bucket/train-000001.tar -``)...
    epoch_size:  images in one epoch (all processes together); default: the index's count. Needed for
                 URLs without an index (the shards' sizes are not known before reading them).
    size:        side of the square images served (shorter side resized, then center-cropped).
    channels:    1 (grayscale) or 3 (RGB).
    image_key:   the sample's image entry: the first of these extensions it has (";"-separated).
    label_key:   the sample's class entry (an integer as text); samples without it, or ``label_key:
                 null``, are unlabeled (-1).
    shuffle:     the shuffle buffer, in images (0: the shards' order). Shards are also shuffled, per epoch.
    resampled:   draw shards at random with replacement, for ever (WebDataset's resampling), instead of
                 splitting the shard list over the readers: for fewer shards than readers, or an
                 infinite stream cut into epochs of ``epoch_size``.
    """

    name = NAME

    def __init__(
        self,
        urls: Union[str, list, None] = None,
        epoch_size: Optional[Annotated[int, Range(min=1, hint="default: the count in the shards' index.json")]] = None,
        size: Annotated[int, Range(min=1)] = 224,
        channels: Literal[1, 3] = 3,
        image_key: str = IMAGE_KEYS,
        label_key: Optional[str] = "cls",
        shuffle: Annotated[int, Range(min=0, hint="images in the shuffle buffer; 0: the shards' order")] = 1000,
        resampled: bool = False,
    ) -> None:
        import webdataset  # noqa: F401  (a clear error now rather than in a loader worker)

        self.image_shape = (channels, size, size)
        self.size, self.mode = size, "L" if channels == 1 else "RGB"
        self.image_keys = [k.strip().lower() for k in image_key.split(";") if k.strip()]
        self.label_key, self.shuffle, self.resampled = label_key, shuffle, resampled
        if urls is None:
            raise DataNotFoundError(f"{NAME}: no shards given: set data.dataset.urls to a folder written by "
                                    f"`cl-run shards`, or to shard URLs", expected_shape=self.image_shape)
        self.urls, counted, self.classes = shard_list(urls, self.image_shape)
        if epoch_size is None and counted is None:
            raise ComponentError(f"{NAME}: epoch_size: set the number of images in one epoch; the shards have no "
                                 f"{INDEX} to count them (`cl-run shards` writes one)", argument="epoch_size")
        if epoch_size is None and counted < 1:
            raise DataError(f"{NAME}: the {INDEX} in {urls} counts no images; write the shards again (`cl-run shards`)")
        self.epoch_size = int(epoch_size if epoch_size is not None else counted)

    def records(self, reader: int, readers: int, seed: int) -> Iterator[dict[str, Any]]:
        import webdataset

        samples = webdataset.tarfile_samples({"url": url} for url in self._shards(reader, readers, seed))
        if self.shuffle:
            samples = webdataset.shuffle(self.shuffle, seed=f"{seed}/{reader}/samples")(samples)
        return samples

    def _shards(self, reader: int, readers: int, seed: int) -> Iterator[str]:
        """This reader's shards, for ever: drawn with replacement (``resampled``), or its share of the shard
        list in an order shuffled anew at every pass (the same order for every reader, so the shares are
        disjoint)."""
        if self.resampled:
            rng = random.Random(f"{seed}/{reader}/shards")
            while True:
                yield rng.choice(self.urls)
        if len(self.urls) < readers:
            raise DataError(f"{NAME}: {len(self.urls)} shard(s) for {readers} readers (processes x data.num_workers): "
                            f"every reader needs a shard of its own; write more shards (`cl-run shards "
                            f"--shard-size`), lower data.num_workers, or set resampled: true")
        for cycle in range(1 << 62):
            order = list(self.urls)
            random.Random(f"{seed}/{cycle}/order").shuffle(order)
            yield from order[reader::readers]

    def decode(self, record: dict[str, Any]) -> tuple[torch.Tensor, int]:
        where = f"{record.get('__url__', '?')}: sample {record.get('__key__', '?')}"
        key = next((k for k in self.image_keys if k in record), None)
        if key is None:
            entries = sorted(k for k in record if not k.startswith("__"))
            raise DataError(f"{NAME}: {where} has no image entry ({'/'.join(self.image_keys)}); it has {entries}; "
                            f"set data.dataset.image_key to its image's extension")
        try:
            image = square_image(io.BytesIO(record[key]), self.size, self.mode)
        except DECODE_ERRORS as exc:
            raise DataError(f"{NAME}: {where}: cannot read its {key} image ({type(exc).__name__}: {exc})") from exc
        label = record.get(self.label_key) if self.label_key else None
        return to_tensor(image), -1 if label is None else int(label)


def shard_list(urls: Union[str, list], shape: tuple) -> tuple[list[str], Optional[int], list[str]]:
    """(shard URLs, images counted by an index or None, classes) of the ``urls`` setting."""
    import webdataset

    if isinstance(urls, str) and Path(urls).expanduser().is_dir():
        folder = Path(urls).expanduser()
        if not (folder / INDEX).is_file():
            raise DataNotFoundError(f"{NAME}: {folder} has no {INDEX}: it is not a folder written by `cl-run shards` "
                                    f"(or its writing did not finish); give shard URLs and epoch_size instead",
                                    expected_shape=shape)
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        return [str(folder / s["url"]) for s in index["shards"]], int(index["images"]), list(index.get("classes", []))
    found = [u for pattern in ([urls] if isinstance(urls, str) else urls)
             for u in webdataset.shardlists.expand_urls(str(pattern))]
    if not found:
        raise ComponentError(f"{NAME}: urls: {urls!r} names no shards", argument="urls")
    local = [u for u in found if not (u.startswith("pipe:") or "://" in u)]
    missing = [u for u in local if not Path(u).expanduser().is_file()]
    if missing:
        raise DataNotFoundError(f"{NAME}: {len(missing)} of {len(found)} shards not found, e.g. {missing[0]}",
                                expected_shape=shape)
    return found, None, []
