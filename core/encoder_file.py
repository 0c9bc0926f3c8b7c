"""The encoder file: a backbone's tensors in safetensors with the recipe as metadata, written atomically.

What the training loop writes at the end of a run and ``cl-run export`` writes on demand
(``clrun.export``); reading it needs no pickle, and timm reads it natively.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import yaml
from torch import Tensor

from clrun.errors import UserError
from clrun.storage import write_atomic
from clrun.version import __version__

_PREFIX = "backbone."
# A backbone's tensors that only pre-training uses (a ViT's mask token) are named with this prefix (their
# last name part): they train and are checkpointed with the backbone, and stay out of the encoder file,
# which then loads into the plain model (timm's own, strictly).
PRETEXT = "pretext_"


def is_pretext(name: str) -> bool:
    """Whether the tensor ``name`` (``a.b.pretext_c``) is pre-training scaffolding, not part of the encoder."""
    return name.rsplit(".", 1)[-1].startswith(PRETEXT)


def encoder_state(network_state: dict[str, Any]) -> dict[str, Tensor]:
    """The backbone's tensors of a checkpoint's ``network`` state, named as in the bare backbone, without
    its pre-training-only ones (``is_pretext``).

    Cloned (safetensors refuses tensors that share storage) and contiguous (it stores plain row-major
    bytes; a ``channels_last`` run's weights are not).
    """
    return {
        key[len(_PREFIX):]: value.detach().cpu().contiguous().clone()
        for key, value in network_state.items()
        if key.startswith(_PREFIX) and not is_pretext(key)
    }


def provenance(init_record: dict[str, Any] | None) -> dict[str, str]:
    """For an encoder file's metadata, where the run's initial weights came from (its ``init:`` record,
    ``RunFolder.read_init``): ``init_sources``, JSON of each loaded part's source, SHA-256 and Hub revision,
    and ``licence``, the licences of those weights (an encoder derived from them is under them too)."""
    if not init_record:
        return {}
    sources = [{key: part.get(key) for key in ("part", "source", "sha256", "revision")}
               for part in init_record.get("parts", []) if isinstance(part, dict)]
    licences = sorted({str(v) for v in (init_record.get("licences") or {}).values()})
    return {"init_sources": json.dumps(sources), **({"licence": "; ".join(licences)} if licences else {})}


def write_encoder(path: Path, backbone_state: dict[str, Tensor], recipe: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``backbone_state`` with its recipe as metadata to ``path``, atomically: a crash leaves the
    previous file or the complete new one, never a half-written file under that name."""
    path = Path(path)
    backbone = dict(recipe.get("backbone") or {})
    name = backbone.pop("name", None)
    if not isinstance(name, str):
        raise ValueError("write_encoder: the recipe has no backbone.name")
    metadata = {
        "format": "pt",  # the safetensors convention: these are PyTorch tensors
        "clrun_version": __version__,
        "recipe": yaml.safe_dump(recipe, sort_keys=False),
        "backbone": name,
        "backbone_args": json.dumps(backbone, sort_keys=True),
    }
    for key, value in (extra or {}).items():
        if key in metadata:
            raise ValueError(f"write_encoder: extra metadata {key!r} would replace a reserved entry")
        metadata[key] = str(value)

    kept = "the previous export is kept" if path.is_file() else ""
    write_atomic(path, lambda tmp: safetensors.torch.save_file(backbone_state, str(tmp), metadata=metadata),
                 "export", kept)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata in a safetensors file's header (empty when it has none)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"no encoder file at {file} (export one with clrun.export.export(<run folder>))")
    try:
        with safetensors.safe_open(str(file), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise UserError(f"{file} is not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
