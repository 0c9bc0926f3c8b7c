"""Encoder export: a trained run's backbone as one ``.safetensors`` file, usable without cl-run.

The backbone is what a contrastive run is for (the projector is scaffolding), so this writes only its
tensors, under the names the bare model uses (``conv1.weight``, not ``backbone.conv1.weight``).

Why safetensors: reading it needs no pickle (a ``.pt`` file can run code when loaded; a safetensors
file is a JSON header plus raw tensor bytes), it is what timm and the Hugging Face tools read natively,
and its header carries string metadata: the recipe the encoder was trained with, the backbone's name
and arguments, the clrun version, epoch and step. ``read_metadata`` shows them.

Loading an export of a ``timm/MODEL`` backbone in timm alone (both load with strict keys)::

    >>> model = timm.create_model(MODEL, num_classes=0, in_chans=1,
                              checkpoint_path=RunFolder("runs/quickstart").encoder)
    >>> # or, through timm's pretrained-weights path:
    >>> model = timm.create_model(MODEL, pretrained=True, num_classes=0, in_chans=1,
                              pretrained_cfg_overlay=dict(file=RunFolder("runs/quickstart").encoder,
                                                          num_classes=0))

``num_classes=0`` in the overlay matters: timm drops the classifier and loads *non*-strictly when the
weights' ``num_classes`` (1000 by default) differs from the model's. The ``backbone_args`` metadata
(``in_chans`` etc.) are timm's keyword arguments, except ``small_image_stem`` (a cl-run change of the
stem that timm cannot build): for those, and for backbones from other plugins, use ``load_encoder``,
which rebuilds the backbone exactly as the recipe did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import yaml
from torch import nn

from clrun.api import create
from clrun.encoder_file import encoder_state, is_pretext, provenance, read_metadata, write_encoder
from clrun.errors import UserError
from clrun.reading import reading
from clrun.run_folder import RunFolder
from clrun.storage import elsewhere
from clrun.training import checkpointing

# The run folder may be read-only (archived, shared, mounted): the export can go anywhere else.
EXPORT_ELSEWHERE = "export to {place} instead (-o FILE.safetensors, or out= in Python)"

__all__ = ["export", "load_encoder", "encoder_state", "read_metadata", "write_encoder"]


def export(run_or_checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Export a run's encoder: the run folder's encoder file unless ``out`` (a file, or a folder to write
    it in under the same name). ``run_or_checkpoint`` is a run folder or its checkpoint file; the recipe
    is read from the resolved recipe beside the checkpoint."""
    checkpoint = checkpointing.find(run_or_checkpoint, "export")
    state = checkpointing.load(checkpoint, "export", parts=("network",))  # a sharded run's: not its optimizer
    folder = RunFolder.of_checkpoint(checkpoint)
    recipe = _read_recipe(folder.recipe, checkpoint)
    backbone = encoder_state(state["network"])
    if not backbone:
        raise UserError(f"export: {checkpoint} holds no backbone tensors (no `backbone.*` keys in its network state)")

    metadata = {"epoch": state.get("epoch"), "step": state.get("step"), **provenance(folder.read_init())}
    with elsewhere(EXPORT_ELSEWHERE):
        return write_encoder(export_path(folder, out), backbone, recipe, metadata)


def export_path(folder: RunFolder, out: str | Path | None) -> Path:
    """Where ``export`` writes: the run folder's encoder file, or ``out`` (a file, or a folder to put it in)."""
    target = folder.encoder if out is None else Path(out)
    if target.is_dir():
        target = target / folder.encoder.name
    if target.suffix != ".safetensors":
        # timm picks its reader by this suffix; any other name would be read as a pickle and fail.
        raise UserError(f"export: {target}: the output file name must end in .safetensors")
    if not target.parent.is_dir():
        raise UserError(f"export: {target}: the folder {target.parent} does not exist")
    return target


def load_encoder(path: str | Path) -> nn.Module:
    """Rebuild an exported backbone as its recipe built it and load the file's weights (strict keys and
    shapes). Returns the module in eval mode, on the CPU."""
    file = Path(path)
    metadata = read_metadata(file)
    if "backbone" not in metadata:
        raise UserError(f"{file} is not a cl-run encoder export (its metadata has no `backbone` entry); "
                        f"export a run with clrun.export.export(<run folder>)")
    name = metadata["backbone"]
    with reading(file, "load_encoder", "cl-run encoder export"):
        args = json.loads(metadata.get("backbone_args", "{}"))
        if not isinstance(args, dict):
            raise ValueError(f"its backbone_args metadata is a {type(args).__name__}, not a mapping")
    args.pop("checkpoint_path", None)
    if "pretrained" in args:  # only if set: a plugin backbone may not take this argument
        args["pretrained"] = False
    try:
        model = create("backbone", name, **args)
    except UserError as exc:
        raise UserError(f"{file}: cannot rebuild its backbone {name} with {args}: {exc}") from exc
    load_encoder_state(model, file, f"backbone {name} with {args}")
    return model.eval()


def load_encoder_state(model: nn.Module, file: Path, what: str) -> None:
    """Load an encoder file's tensors into ``model`` (``what`` names it in the error): strict keys and shapes,
    except the pre-training-only tensors the export leaves out, which keep the model's initial values."""
    with reading(file, "load_encoder", "cl-run encoder export"):
        state = safetensors.torch.load_file(str(file))
    state.update({k: v for k, v in model.state_dict().items() if is_pretext(k) and k not in state})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise UserError(f"{file}: its tensors do not fit {what} ({detail})") from None


def _read_recipe(file: Path, checkpoint: Path) -> dict[str, Any]:
    if not file.is_file():
        raise UserError(f"export: no {file.name} at {file}; the export records the recipe its checkpoint "
                        f"{checkpoint} was trained with: put that run's {file.name} beside it")
    try:
        recipe = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"export: {file} is not valid YAML ({exc})") from exc
    backbone = recipe.get("backbone") if isinstance(recipe, dict) else None
    if not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str):
        raise UserError(f"export: {file} has no backbone.name; is it the run's resolved recipe?")
    return recipe
