"""A timm backbone described as a Hugging Face model folder's ``config.json``: what
``timm.create_model("local-dir:FOLDER", pretrained=True)`` (and ``hf-hub:USER/REPO`` once uploaded) builds
the same model from, with its input size and normalization.

``cl-run export --hub-folder`` (``clrun.commands.hub_folder``) asks a backbone for this through its method
``hub_config``, which ``create_timm_backbone`` gives every timm backbone: core names no model library, and a
plugin's own backbone can offer a folder for its library the same way.

The config is timm's own (``save_config_for_hf``, what ``timm.models.push_to_hf_hub`` writes), told the
arguments the backbone was created with, then given the run's preprocessing and cleared of what described
the weights timm ships for the architecture (their tag, licence, paper and origin): these are other weights.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import types
from pathlib import Path
from typing import Any, Sequence

from timm.models._hub import save_config_for_hf  # what timm.models.push_to_hf_hub writes
from torch import nn

from clrun import RunFolder, UserError

# How cl-run's image readers and its evaluation size an image: the shorter side resized to the input size
# with a bilinear, antialiased filter, the center square kept (timm's crop_pct 1.0, crop_mode center).
INTERPOLATION, CROP_PCT, CROP_MODE = "bilinear", 1.0, "center"
# pretrained_cfg entries that describe timm's released weights for the architecture, not these.
SOURCE_NOTES = ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes", "description", "hf_hub_id",
                "url", "file", "source", "label_names", "label_descriptions")
LOAD = 'import timm\n\nmodel = timm.create_model("{source}", pretrained=True).eval()  # model(images): (B, {width}) features'


def offer_hub_config(model: nn.Module, model_name: str, args: dict[str, Any], small_image_stem: bool) -> None:
    """Give ``model`` (made by ``create_timm_backbone`` from ``model_name`` with timm's keyword ``args``) its
    ``hub_config`` method. What it was made from is kept as plain data (``hub_source``), and the method is a
    module-level function bound to the model, so the model still deep-copies (a momentum target) and pickles."""
    model.hub_source = {"model_name": model_name, "args": dict(args), "small_image_stem": small_image_stem}
    model.hub_config = types.MethodType(hub_config, model)


def hub_config(model: nn.Module, *, size: Sequence[int], mean: Sequence[float], std: Sequence[float],
               license: str) -> dict[str, Any]:
    """The folder description of ``model`` (see ``offer_hub_config``), for images of ``size`` (H, W) normalized
    with ``mean`` and ``std``, under the Hugging Face licence identifier ``license``.

    Returns ``config`` (config.json's content), ``library_name`` (the model card's), ``architecture`` and
    ``load`` (Python that loads the folder, with ``{source}`` for its ``local-dir:``/``hf-hub:`` name).
    Raises a UserError naming the reason when timm cannot rebuild this backbone from a config."""
    model_name, args = model.hub_source["model_name"], model.hub_source["args"]
    if model.hub_source["small_image_stem"]:
        raise UserError(
            f"timm/{model_name} with small_image_stem: true cannot be written as a timm model folder: its stem (a "
            f"3x3 stride-1 first convolution, no max-pool) is cl-run's change of the model, which timm cannot "
            f"build from a config.json; share the encoder file instead (`cl-run export RUN` writes "
            f"{RunFolder('.').encoder.name}) and load it with clrun.export.load_encoder, or train without "
            f"small_image_stem")
    # Reconstruction arguments only: drop rates change training, not the model that loads the weights.
    model_args = {k: v for k, v in args.items() if not k.endswith("drop_rate") and k != "drop_path_rate"}
    channels = int(model_args.get("in_chans", 3))
    data = {"input_size": [channels, *map(int, size)], "mean": list(mean), "std": list(std),
            "interpolation": INTERPOLATION, "crop_pct": CROP_PCT, "crop_mode": CROP_MODE}
    # timm 1.0.2x takes the preprocessing as data_config; older ones get it set below only (the same values).
    told = {"data_config": data} if "data_config" in inspect.signature(save_config_for_hf).parameters else {}
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "config.json"
        save_config_for_hf(model, str(file), model_args=model_args, **told)
        config = json.loads(file.read_text(encoding="utf-8"))
    pretrained = config.setdefault("pretrained_cfg", {})
    for key in SOURCE_NOTES:
        pretrained.pop(key, None)
    if pretrained.get("input_size") != data["input_size"]:
        pretrained["pool_size"] = None  # timm's feature-map size for its own input size
    pretrained.update(data, num_classes=0, tag="clrun", license=license)
    pretrained.pop("test_input_size", None)  # timm's test-time size for its own weights
    pretrained.pop("test_crop_pct", None)
    config["num_classes"] = 0  # a feature extractor: timm builds no classifier
    width = getattr(model, "head_hidden_size", None) or config.get("num_features", "F")  # the pooled width
    return {"config": config, "library_name": "timm", "architecture": config["architecture"],
            "load": LOAD.replace("{width}", str(width))}
