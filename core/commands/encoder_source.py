"""What ``cl-run embed`` and ``cl-run export --hub-folder`` run images through: a trained network opened from
a run folder, a checkpoint, an encoder file or a hub folder, with the preprocessing its recipe evaluates with.

Every source is opened the same way: its recipe (the run folder's resolved recipe, or the one an encoder file
carries as metadata) is built as ``cl-run check`` builds it, measured on a few images of its data set (random
images of the data set's shape where the data are not on this machine: only sizes are measured), and the
saved tensors are loaded into it, strictly. So the preprocessing is the evaluators' own (``Run.preprocess``:
the global views' size, the recipe's mean and std), and a plugin's backbone opens as a timm one does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch import Tensor

from clrun.encoder_file import encoder_state, read_metadata
from clrun.errors import UserError
from clrun.export import load_encoder_state
from clrun.plugin_manager import default_registry
from clrun.recipe import Recipe, load_recipe, recipe_from_node
from clrun.recipe.nodes import parse_yaml
from clrun.run_folder import RunFolder
from clrun.training import checkpointing
from clrun.training.run import Run
from clrun.training.setup import prepare

# A hub folder's weights: ``clrun.commands.hub_folder`` writes them with an encoder file's metadata.
HUB_WEIGHTS = "model.safetensors"
KINDS_OF_SOURCE = ("a run folder, a checkpoint, an encoder file (.safetensors) or a hub folder "
                   "(cl-run export --hub-folder)")


@dataclass
class Source:
    """A trained network ready to embed with: ``run.network`` (its backbone, and its projector where the
    source holds one) loaded and in eval mode on ``run.device``; ``run.preprocess`` makes a uint8 batch what
    the network takes."""

    run: Run
    kind: str  # "checkpoint" (backbone and projector) or "encoder file" (the backbone alone)
    path: Path  # the file (or sharded checkpoint folder) the tensors came from
    recipe_text: str  # the resolved recipe the network was trained with (YAML)
    channels: int  # the image channels the network takes
    position: dict[str, Any]  # epoch and step of the weights, where known
    folder: Optional[RunFolder] = None  # the run folder of a checkpoint

    @property
    def recipe(self) -> Recipe:
        return self.run.recipe

    @property
    def has_projector(self) -> bool:
        return self.kind == "checkpoint"

    def encoder_tensors(self) -> dict[str, Tensor]:
        """The backbone's tensors, named and filtered as in the encoder file."""
        return encoder_state(self.run.network.state_dict())

    def preprocessing(self) -> dict[str, Any]:
        """How an image becomes the network's input, as data (recorded with what is made from it)."""
        data = self.recipe.data
        return {"size": [int(s) for s in self.run.parts.eval_size], "channels": self.channels,
                "scale": "uint8 / 255",
                "resize": "bilinear, antialiased, to size where an image's size differs",
                "mean": None if data.mean is None else [float(m) for m in data.mean],
                "std": None if data.std is None else [float(s) for s in data.std]}


def open_source(source: str | Path, device: torch.device, command: str) -> Source:
    """The network that ``source`` holds (see ``KINDS_OF_SOURCE``), built on ``device``; ``command`` starts
    the error messages."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"{command}: {path} does not exist; give {KINDS_OF_SOURCE}")
    if path.is_file() and path.suffix == ".safetensors":
        return from_encoder_file(path, device, command)
    if path.is_dir() and not RunFolder(path).is_run() and (path / HUB_WEIGHTS).is_file():
        return from_encoder_file(path / HUB_WEIGHTS, device, command)
    try:
        checkpoint = checkpointing.find(path, command)
    except UserError:
        folder = RunFolder(path)
        if path.is_dir() and folder.encoder.is_file():  # a run kept without its checkpoint: its encoder
            return from_encoder_file(folder.encoder, device, command)
        raise
    return from_checkpoint(checkpoint, device, command)


def from_checkpoint(checkpoint: Path, device: torch.device, command: str) -> Source:
    folder = RunFolder.of_checkpoint(checkpoint)
    if not folder.is_run():
        raise UserError(f"{command}: no {folder.recipe.name} beside {checkpoint}; cl-run rebuilds the network from the "
                        f"run's resolved recipe: put that run's {folder.recipe.name} in {folder.path}")
    recipe = load_recipe(folder.recipe, (), default_registry())
    run, channels = built(recipe, device)
    state = checkpointing.load(checkpoint, command, parts=("network",))
    checkpointing.load_module(run.network, state["network"], f"{command}: {checkpoint}: its network",
                              f"keep the run's own {folder.recipe.name} beside it")
    return Source(run, "checkpoint", checkpoint, folder.recipe.read_text(encoding="utf-8"), channels,
                  {"epoch": state.get("epoch"), "step": state.get("step")}, folder)


def from_encoder_file(file: Path, device: torch.device, command: str) -> Source:
    metadata = read_metadata(file)
    if "recipe" not in metadata or "backbone" not in metadata:
        raise UserError(f"{command}: {file} is not a cl-run encoder file (its metadata has no recipe to rebuild the "
                        f"backbone and its preprocessing from); give {KINDS_OF_SOURCE} written by cl-run")
    text = metadata["recipe"]
    recipe = recipe_from_node(parse_yaml(text, f"{file} (its recipe metadata)"), default_registry())
    recipe.source = str(file)
    run, channels = built(recipe, device)
    load_encoder_state(run.network.backbone, file, f"the backbone {metadata['backbone']} of its recipe")
    position = {k: int(metadata[k]) for k in ("epoch", "step") if str(metadata.get(k, "")).isdigit()}
    return Source(run, "encoder file", file, text, channels, position)


def built(recipe: Recipe, device: torch.device) -> tuple[Run, int]:
    """``recipe``'s network on ``device``, in eval mode, with the run's preprocessing; and the image channels.

    Built for ``check``: that path measures the views on random images of the data set's shape when the data
    set is not on this machine (an embedding or an export needs only the sizes), and loads no ``init:``
    weights (the saved tensors replace them)."""
    setup = prepare(recipe, "check", device, initialize=False)
    run = Run(recipe, setup.parts, setup.device, None, steps_per_epoch=1)
    run.network.eval()
    return run, int(setup.example.shape[1])


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of named tensors, in name order: each one's name, dtype, shape and bytes. The same weights give
    the same hash whichever file they came from (checkpoint, encoder file, hub folder)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def plain_recipe(text: str) -> dict[str, Any]:
    """The resolved recipe's YAML text as data (it was written by cl-run: plain YAML)."""
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}
