"""Find and read the weight file an ``init:`` entry names: a file, a folder or a Hugging Face Hub repository.

* a ``.safetensors`` file (a cl-run encoder export, a model's released weights);
* any other file: a ``torch.save`` pickle (``.pth``, ``.pt``, ``.ckpt``), read without running code
  (``clrun.weights.safe_pickle``);
* a folder in timm's ``local-dir:`` layout, ``config.json`` + ``model.safetensors`` (what a Hub
  repository holds), or a cl-run run folder (its latest checkpoint);
* ``hf-hub:ORG/NAME`` or a bare ``ORG/NAME`` that is not a path here (``timm/vit_small_patch16_224.augreg_in21k``):
  the Hub repository's ``config.json`` and ``model.safetensors``, downloaded by ``huggingface_hub`` into its
  cache (offline: from the cache only).

Every failure is a ``UserError`` naming the source, the cause and the fix (``clrun.reading``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from clrun.errors import UserError
from clrun.weights import safe_pickle
from clrun.weights.layout import WeightsFile

HUB_PREFIX = "hf-hub:"
_REPOSITORY = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONFIG, MODEL = "config.json", "model.safetensors"


class NotDownloaded(UserError):
    """A Hub repository that is neither in the local cache nor reachable: ``cl-run check`` reports it as
    "downloaded at training" and checks the rest of the plan on randomly initialized weights."""


def hub_repository(source: str) -> str | None:
    """The Hub repository ``source`` names, or None for a path (a name that exists here is a path)."""
    if source.startswith(HUB_PREFIX):
        return source[len(HUB_PREFIX):]
    if _REPOSITORY.match(source) and not Path(source).exists():
        return source
    return None


def read_source(source: str, what: str, download: bool = True) -> WeightsFile:
    """The weight file ``source`` names, read. ``download=False`` (``cl-run check``): a Hub repository not in
    the cache raises ``NotDownloaded`` instead of going to the network."""
    repository = hub_repository(source)
    if repository is not None:
        folder, revision = _from_hub(repository, what, download)
        file = _read_folder(folder, source, what)
        file.revision = revision
        return file
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, source, what)
    return read_file(path, what, source)


def read_file(path: Path, what: str, source: str | None = None) -> WeightsFile:
    """One weight file, safetensors or a pickle (told apart by their first bytes, not by the name), its
    bytes hashed. A missing, empty, unreadable or damaged file is one ``UserError`` with the cause and the fix."""
    if not path.exists():
        raise UserError(f"{what}: no file at {path} (relative paths start in {Path.cwd()}); check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{what}: {path} is empty (0 bytes): an interrupted copy or download; copy it again")
    kind = "safetensors file" if is_safetensors(path) else "torch.save file"
    try:
        if kind == "safetensors file":
            content, metadata = _read_safetensors(path)
        else:
            content, metadata = safe_pickle.load(path, what), {}
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"{what}: {path} cannot be read (permission denied); make it readable by this user") from None
    except Exception as exc:  # noqa: BLE001 - every reader's failure on a damaged file, reworded once
        raise UserError(f"{what}: {path} is a damaged or foreign {kind} ({_cause(exc)}); copy or download it "
                        f"again, or pass a state dict of tensors (.safetensors or torch.save)") from None
    if not isinstance(content, dict):
        raise UserError(f"{what}: {path} holds a {type(content).__name__}, not a dict of tensors; pass a state dict "
                        f"or a training checkpoint")
    return WeightsFile(source or str(path), path, content, metadata, sha256(path))


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: an 8-byte header length, then its JSON's ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _cause(exc: Exception) -> str:
    """A reader's error in a few words: its first sentence, without the reader's boilerplate."""
    text = " ".join(str(exc).split()).replace("Error while deserializing header: ", "")
    first = text.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import safetensors
    import safetensors.torch

    with safetensors.safe_open(str(path), framework="pt") as opened:
        metadata = dict(opened.metadata() or {})
    return safetensors.torch.load_file(str(path)), metadata


def _read_folder(folder: Path, source: str, what: str) -> WeightsFile:
    """A timm ``local-dir`` folder, or a cl-run run folder (its latest checkpoint)."""
    model, config = folder / MODEL, folder / CONFIG
    if model.is_file():
        file = read_file(model, what, source)
        if config.is_file():
            file.metadata = {**file.metadata, "config": _read_config(config, what)}
        return file
    # A run folder: read as `cl-run eval` reads it (the storage module, not the package: that one builds runs).
    from clrun.training.checkpointing import checkpointer

    try:
        saved = checkpointer.find(folder, what)
    except UserError:
        raise UserError(f"{what}: {folder} is neither a model folder ({MODEL}, with {CONFIG}: timm's local-dir "
                        f"layout, what a Hugging Face Hub repository of timm weights holds) nor a cl-run run folder with a checkpoint; point it at "
                        f"one of those, or at a weight file") from None
    state = checkpointer.load(saved, what, parts=("network", "target"))
    content = {key: state[key] for key in ("network", "target") if isinstance(state.get(key), dict)}
    content["clrun_checkpoint"] = {"epoch": state.get("epoch"), "step": state.get("step")}
    path = saved if saved.is_file() else saved
    return WeightsFile(source, path, content, {}, sha256(path) if path.is_file() else _folder_digest(path))


def _read_config(path: Path, what: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what}: {path} is not valid JSON ({exc}); restore the folder's {CONFIG} (a timm model "
                        f"folder's, from the same download as its {MODEL})") from None
    if not isinstance(config, dict):
        raise UserError(f"{what}: {path} holds a JSON {type(config).__name__}, not an object; restore the folder's "
                        f"{CONFIG}")
    return config


def _from_hub(repository: str, what: str, download: bool) -> tuple[Path, str | None]:
    """The local folder of a Hub repository's ``config.json`` and ``model.safetensors``, and its commit."""
    try:
        import huggingface_hub
    except ImportError:  # pragma: no cover - timm depends on it
        raise UserError(f"{what}: reading {repository} from the Hugging Face Hub needs huggingface_hub "
                        f"(pip install huggingface_hub), or a local copy of the folder") from None
    try:
        model = huggingface_hub.hf_hub_download(repository, MODEL, local_files_only=not download)
        try:
            huggingface_hub.hf_hub_download(repository, CONFIG, local_files_only=not download)
        except huggingface_hub.errors.EntryNotFoundError:
            pass  # a repository of weights only: no configuration to compare with
    except Exception as exc:  # noqa: BLE001 - offline, unknown repository, gated: one message each way
        if not download:
            raise NotDownloaded(f"{what}: {repository} is not in the Hugging Face cache: downloaded at training") from None
        detail = " ".join(str(exc).split())[:200]
        raise UserError(
            f"{what}: {repository} could not be read from the Hugging Face Hub ({type(exc).__name__}: {detail}); "
            f"without network, download it where there is one (huggingface-cli download {repository}) and point "
            f"the recipe at the folder holding {CONFIG} and {MODEL}") from None
    folder = Path(model).parent
    return folder, folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_digest(folder: Path) -> str:
    """A sharded checkpoint's SHA-256: of its files' names and bytes, in name order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(sha256(file).encode())
    return digest.hexdigest()
