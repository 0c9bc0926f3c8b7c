"""``cl-run export RUN --hub-folder DIR [--push USER/REPO]``: a run's encoder as a Hugging Face model folder.

The folder holds three files, the layout the Hub serves and a model library builds a model from by itself:

- ``model.safetensors``: the backbone's tensors under the library's own names. It is the encoder file
  (``clrun.encoder_file``) under the Hub's name, so its metadata (recipe, backbone, epoch, step) comes along,
  and ``clrun.export.load_encoder`` and ``cl-run embed`` read it as they read a run's encoder file.
- ``config.json``: what the library needs to rebuild the model (for a timm backbone, timm's own config:
  ``architecture``, ``model_args``, ``num_classes: 0``, ``pretrained_cfg`` with input size, mean, std...), so
  that ``timm.create_model("local-dir:DIR", pretrained=True)`` gives the run's encoder, bit for bit.
- ``README.md``: the model card (``clrun.commands.model_card``).

Core names no model library: the backbone describes itself through its method ``hub_config(size=, mean=,
std=, license=)`` (the timm backbones' is ``clrun.plugins.backbones.timm_hub``), and a backbone without one,
or one its library cannot rebuild from a config (timm with cl-run's ``small_image_stem``), is an error that
says so and points to the encoder file, which ``load_encoder`` rebuilds from any backbone.

``--push USER/REPO`` then uploads the folder with ``huggingface_hub`` (which timm depends on): one
``create_repo(exist_ok=True)`` and one ``upload_folder``, exactly the files in the folder. The token comes
from where huggingface_hub looks for it (the ``HF_TOKEN`` environment variable, else its stored login):
cl-run takes none on the command line and writes none anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from clrun.commands.encoder_source import HUB_WEIGHTS, Source, open_source, plain_recipe
from clrun.commands.model_card import model_card
from clrun.encoder_file import provenance, write_encoder
from clrun.errors import UserError
from clrun.run_folder import RunFolder
from clrun.plugin_manager import default_registry
from clrun.storage import elsewhere, make_folder, write_atomic

CONFIG, CARD = "config.json", "README.md"
FILES = (HUB_WEIGHTS, CONFIG, CARD)
# A Hugging Face licence identifier: "other" says "see the card", which says that none was chosen.
DEFAULT_LICENSE = "other"
HUB_ELSEWHERE = "write the folder to {place} instead (another --hub-folder DIR)"


def write_hub_folder(run_or_checkpoint: str | Path, out: str | Path, license: str = DEFAULT_LICENSE,
                     repo_id: Optional[str] = None) -> Path:
    """Write the hub folder of ``run_or_checkpoint``'s encoder to ``out`` (a new or empty folder, or an earlier
    hub folder, whose files are replaced); returns ``out``. ``repo_id``: where it will be uploaded, for the
    card's loading line (uploading is ``push_folder``)."""
    out = Path(out).expanduser()
    check_target(out)
    source = open_source(run_or_checkpoint, torch.device("cpu"), "export")
    pre = source.preprocessing()
    channels = source.channels
    hub = describe(source, size=pre["size"], mean=per_channel(pre["mean"], channels, 0.0),
                   std=per_channel(pre["std"], channels, 1.0), license=license)
    recipe = plain_recipe(source.recipe_text)
    metadata = dict(source.position)
    if source.folder is not None:
        metadata.update(provenance(source.folder.read_init()))
    load_source = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{out.resolve()}"
    card = model_card(hub=hub, recipe=recipe, recipe_text=source.recipe_text, preprocessing=pre,
                      position=source.position, folder=source.folder, license=license, load_source=load_source,
                      repo_id=repo_id)
    with elsewhere(HUB_ELSEWHERE):
        make_folder(out, "export")
        write_encoder(out / HUB_WEIGHTS, source.encoder_tensors(), recipe, metadata)
        write_atomic(out / CONFIG, json.dumps(hub["config"], indent=2) + "\n", "export")
        write_atomic(out / CARD, card, "export")
    return out


def describe(source: Source, **preprocessing: Any) -> dict[str, Any]:
    """The backbone's own description of its folder (its ``hub_config``), or an error naming why there is none."""
    backbone = source.run.network.backbone
    name = source.recipe.backbone.name
    hub_config = getattr(backbone, "hub_config", None)
    if hub_config is None:
        provider = default_registry().get("backbone", name).provider or "its plugin"
        raise UserError(
            f"export --hub-folder: backbone {name} (from {provider}) cannot be written as a model folder: it offers "
            f"no hub_config() describing how a model library rebuilds it from a config.json. Share the encoder "
            f"file instead (`cl-run export RUN` writes {RunFolder('.').encoder.name}) and load it with "
            f"clrun.export.load_encoder, which rebuilds any backbone from its recipe")
    return hub_config(**preprocessing)


def per_channel(values: Optional[Sequence[float]], channels: int, neutral: float) -> list[float]:
    """The recipe's mean or std for each channel: one value stands for all (as in training), none is ``neutral``."""
    if values is None:
        return [neutral] * channels
    return [float(values[0])] * channels if len(values) == 1 else [float(v) for v in values]


def check_target(out: Path) -> None:
    """``out`` is new, empty, or an earlier hub folder (its files are replaced): nothing else is overwritten."""
    if out.exists() and not out.is_dir():
        raise UserError(f"export --hub-folder: {out} is a file; give a new or empty folder")
    others = sorted(p.name for p in out.iterdir() if p.name not in FILES) if out.is_dir() else []
    if others:
        raise UserError(f"export --hub-folder: {out} holds other files ({', '.join(others[:5])}); give a new or empty "
                        f"folder (or an earlier hub folder, which holds only {', '.join(FILES)})")


def push_folder(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created if missing); returns its address.
    A failure (no network, no token, no permission) leaves the folder as it is, to upload later."""
    from huggingface_hub import HfApi

    api = HfApi()  # the token: HF_TOKEN or huggingface_hub's stored login, looked up by huggingface_hub itself
    try:
        repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder), repo_type="model",
                          commit_message=f"cl-run export: {', '.join(FILES)}")
    except Exception as exc:  # huggingface_hub's HTTP, auth and validation errors: the folder is fine, say so
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"export --push: uploading {folder} to {repo_id} failed ({type(exc).__name__}: {detail}); "
                        f"the folder is complete: check HF_TOKEN (a write token) and the repository name, then "
                        f"upload it with `hf upload {repo_id} {folder}` or run the export with --push again") from None
    return getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}"
