"""The layouts of files that cl-run writes itself, of timm's model folders, and of a plain state dict (the
last resort): ``weights_layout`` components like any plugin's (``clrun.plugins.weights`` registers them).

A run's checkpoint (file or run folder) holds two networks, ``online`` (what training updates and the
export keeps) and ``target`` (the momentum copy, where the run had one); an exported encoder and a
timm folder hold a backbone only.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from clrun.weights.layout import PARTS, Trained, WeightsFile

_BACKBONE = "backbone."


def _tensors_only(state: Any) -> bool:
    import torch

    return isinstance(state, dict) and bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def _split(state: dict[str, Any], parts: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``{"backbone.x": t, "projector.y": u}`` as ``{"backbone": {"x": t}, "projector": {"y": u}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        part, _, name = key.partition(".")
        if part in parts and name:
            out.setdefault(part, {})[name] = value
    return out


class ClrunCheckpoint:
    """A cl-run checkpoint: the file, or the run folder (its latest checkpoint). Networks ``online`` and,
    where the run had a momentum target, ``target``."""

    def recognizes(self, file: WeightsFile) -> bool:
        network = file.content.get("network")
        return isinstance(network, dict) and any(str(k).startswith(_BACKBONE) for k in network)

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        target = file.content.get("target")
        has_target = isinstance(target, dict) and any(str(k).startswith(_BACKBONE) for k in target)
        return ("online", "target") if has_target else ("online",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, dict[str, Any]]:
        state = file.content["network" if network == "online" else "target"]
        return _split(state, PARTS)

    def trained(self, file: WeightsFile) -> Trained:
        return Trained()


class ClrunEncoder:
    """A cl-run encoder export (``RunFolder.encoder``, ``cl-run export``): a backbone with its recipe as metadata."""

    def recognizes(self, file: WeightsFile) -> bool:
        return "clrun_version" in file.metadata and "backbone" in file.metadata

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("online",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, dict[str, Any]]:
        return {"backbone": dict(file.content)}

    def trained(self, file: WeightsFile) -> Trained:
        try:
            recipe = yaml.safe_load(file.metadata.get("recipe") or "") or {}
        except yaml.YAMLError:
            recipe = {}
        data = recipe.get("data") if isinstance(recipe, dict) else None
        data = data if isinstance(data, dict) else {}
        mean, std = data.get("mean"), data.get("std")
        return Trained(mean=tuple(mean) if isinstance(mean, list) else None,
                       std=tuple(std) if isinstance(std, list) else None,
                       licence=file.metadata.get("licence"))


class TimmFolder:
    """A model folder in timm's ``local-dir:`` layout (``config.json`` + ``model.safetensors``), which is what a
    Hugging Face Hub repository of timm weights holds: a backbone, its ``pretrained_cfg`` the settings."""

    def recognizes(self, file: WeightsFile) -> bool:
        return isinstance(file.metadata.get("config"), dict) and "clrun_version" not in file.metadata

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("model",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, dict[str, Any]]:
        return {"backbone": dict(file.content)}

    def trained(self, file: WeightsFile) -> Trained:
        config = file.metadata["config"]
        cfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
        size = cfg.get("input_size")
        licence = cfg.get("license") or config.get("license")
        return Trained(mean=_floats(cfg.get("mean")), std=_floats(cfg.get("std")),
                       image_size=int(size[-1]) if isinstance(size, list) and size else None,
                       licence=str(licence) if licence else None)


class StateDict:
    """The last resort: a flat ``{name: tensor}`` (a released backbone), possibly in a
    ``state_dict`` or ``model`` entry, with a ``module.`` (DDP) prefix on every key dropped. Tried after every
    other layout (``fallback``): its tensors go to the backbone, under the names they have."""

    fallback = True

    def recognizes(self, file: WeightsFile) -> bool:
        return _tensors_only(self._state(file))

    def networks(self, file: WeightsFile) -> tuple[str, ...]:
        return ("model",)

    def parts(self, file: WeightsFile, network: str) -> dict[str, dict[str, Any]]:
        state = self._state(file)
        if all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        return {"backbone": state}

    def trained(self, file: WeightsFile) -> Trained:
        return Trained(licence=file.metadata.get("licence"))

    @staticmethod
    def _state(file: WeightsFile) -> Any:
        state = file.content
        for key in ("state_dict", "model"):  # what training scripts wrap a state dict in
            if isinstance(state.get(key), dict):
                return state[key]
        return state


def _floats(value: Any) -> tuple[float, ...] | None:
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    if isinstance(value, str):  # a config written by hand
        try:
            return _floats(json.loads(value))
        except json.JSONDecodeError:
            return None
    return None


OWN_LAYOUTS: dict[str, type] = {
    "clrun/checkpoint": ClrunCheckpoint,
    "clrun/encoder": ClrunEncoder,
    "timm/local-dir": TimmFolder,
    "clrun/state_dict": StateDict,
}
"""cl-run's own layouts by name: ``clrun.plugins.weights`` offers them as components (so that ``cl-run
components weights_layout`` lists them); ``clrun.weights.plan`` knows them without the registry too."""
