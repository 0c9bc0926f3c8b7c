"""The ``README.md`` of a hub folder (``cl-run export --hub-folder``): a Hugging Face model card that says what
the encoder is, how it was trained and how good it is, and how to load it in one line.

The YAML front matter is what the Hub reads (``license``, ``library_name``, ``pipeline_tag``, ``tags``); the
body is for a person: the method, the data, the budget, the run's evaluation table, the preprocessing, where
the initial weights came from, and the resolved recipe itself, which rebuilds the run. Nothing secret goes
in: the card is made from the recipe and the run's records, never from the environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from clrun.run_folder import RunFolder
from clrun.training.callbacks.reporting import PERCENT_SUFFIXES, PROJECTOR
from clrun.version import __version__

TAGS = ("cl-run", "self-supervised", "image-feature-extraction")


def model_card(*, hub: Mapping[str, Any], recipe: Mapping[str, Any], recipe_text: str, preprocessing: Mapping[str, Any],
               position: Mapping[str, Any], folder: Optional[RunFolder], license: str, load_source: str,
               repo_id: Optional[str]) -> str:
    """The card's Markdown. ``hub``: what the backbone's ``hub_config`` returned; ``load_source``: the name the
    loading line uses (``hf-hub:USER/REPO`` or ``local-dir:PATH``)."""
    run_name = (recipe.get("run") or {}).get("name") or (folder.path.name if folder else "encoder")
    architecture = hub["architecture"]
    front = {"license": license, "library_name": hub["library_name"], "pipeline_tag": "image-feature-extraction",
             "tags": [*TAGS, hub["library_name"]]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {run_name}: a {architecture} encoder trained with cl-run", "",
             f"Self-supervised pre-training with [cl-run](https://pypi.org/project/cl-run/) {__version__}: "
             f"{method(recipe)}. This folder holds the backbone alone (pooled features, no classifier); the "
             f"projector and the loss were scaffolding for training it.", "",
             "## How to load it", "", "```python", hub["load"].replace("{source}", load_source), "```", ""]
    if repo_id is None:
        lines += ["Uploaded to the Hugging Face Hub (e.g. `cl-run export RUN --hub-folder DIR --push USER/REPO`), "
                  "the same line loads it with `hf-hub:USER/REPO`.", ""]
    lines += [preprocessing_text(preprocessing), "",
              "## Training", "", "| | |", "|---|---|", *training_rows(recipe, position, folder), "",
              "## Evaluation", "", *evaluation_section(folder, recipe), "",
              "## License", "", license_text(license, folder), "",
              "## Recipe", "",
              f"The resolved recipe (every setting the run used); `cl-run {RunFolder('.').recipe.name}` trains it again.",
              "", "```yaml", recipe_text.rstrip(), "```", ""]
    return "\n".join(lines)


def method(recipe: Mapping[str, Any]) -> str:
    """The method as its recipe names it: loss, heads, target, masking."""
    parts = [f"loss `{name_of(recipe.get('loss'))}`"]
    for key in ("projector", "predictor"):
        if recipe.get(key):
            parts.append(f"{key} `{name_of(recipe[key])}`")
    target = recipe.get("target")
    if isinstance(target, Mapping):
        parts.append(f"a momentum target (momentum {target.get('momentum')})")
    masking = recipe.get("masking")
    if isinstance(masking, Mapping) and masking.get("generator"):
        parts.append(f"masks from `{name_of(masking['generator'])}`")
    return ", ".join(parts)


def name_of(spec: Any) -> str:
    return str(spec.get("name")) if isinstance(spec, Mapping) else str(spec)


def component_text(spec: Any) -> str:
    """``name`` (arg: value, ...) of a recipe entry."""
    if not isinstance(spec, Mapping):
        return f"`{spec}`"
    args = ", ".join(f"{k}: {json.dumps(v)}" for k, v in spec.items() if k != "name" and v is not None)
    return f"`{spec.get('name')}`" + (f" ({args})" if args else "")


def training_rows(recipe: Mapping[str, Any], position: Mapping[str, Any], folder: Optional[RunFolder]) -> list[str]:
    data, train = recipe.get("data") or {}, recipe.get("train") or {}
    views = ", ".join(f"{v.get('count', 1)} x {v.get('name', 'view')}" + (" (local)" if v.get("local") else "")
                      for v in recipe.get("views") or [] if isinstance(v, Mapping))
    budget = [plural(train.get("epochs"), "epoch")]
    if train.get("max_steps"):
        budget.append(f"at most {train['max_steps']} steps")
    if position.get("step") is not None:
        budget.append(f"these weights after epoch {position.get('epoch')}, step {position.get('step')}")
    budget.append(f"batch {data.get('batch_size')} per process")
    summary = read_json(folder.summary) if folder else {}
    seconds = summary.get("wall_time_s")
    if isinstance(seconds, (int, float)):
        budget.append(f"{seconds / 60:.1f} min of training" if seconds >= 60 else f"{seconds:.0f} s of training")
    optimizer = component_text(recipe.get("optimizer"))
    rows = [f"| data | {component_text(data.get('dataset'))} |", f"| views | {views} |",
            f"| backbone | {component_text(recipe.get('backbone'))} |", f"| optimizer | {optimizer} |",
            f"| budget | {', '.join(budget)} |", f"| seed | {recipe.get('seed')} |"]
    init = folder.read_init() if folder else None
    if init:
        sources = ", ".join(f"{p.get('part')}: `{p.get('source')}`" for p in init.get("parts", []) if isinstance(p, dict))
        rows.append(f"| initialized from | {sources} |")
    return rows


def plural(count: Any, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def evaluation_section(folder: Optional[RunFolder], recipe: Mapping[str, Any]) -> list[str]:
    """The run's scores in percent, backbone and projector side by side: its final record (``RunFolder.summary``)
    and a later ``cl-run eval`` (``RunFolder.evaluation``), which wins where both have a score."""
    if folder is None:
        return ["No evaluation recorded: this folder was exported from an encoder file, not a run folder."]
    results = dict(read_json(folder.summary))
    later = read_json(folder.evaluation).get("results")
    if isinstance(later, dict):
        results.update(later)
    names = [k for k in results if k.endswith(PERCENT_SUFFIXES) and not k.endswith(PROJECTOR)]
    names += [k.removesuffix(PROJECTOR) for k in results
              if k.endswith(PROJECTOR) and k.removesuffix(PROJECTOR).endswith(PERCENT_SUFFIXES)
              and k.removesuffix(PROJECTOR) not in names]
    if not names:
        return ["The run recorded no evaluation score (its recipe has no evaluator callback; `cl-run eval RUN --with "
                "FILE` adds some)."]
    callbacks = ", ".join(f"`{name_of(c)}`" for c in recipe.get("callbacks") or [])
    return ["| evaluation | backbone | projector |", "|---|---:|---:|",
            *(f"| {n} | {percent(results.get(n))} | {percent(results.get(n + PROJECTOR))} |" for n in names), "",
            f"Measured by the run's evaluators ({callbacks}) on their test sets, as the recipe below names them."]


def percent(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "-"


def preprocessing_text(pre: Mapping[str, Any]) -> str:
    height, width = pre["size"]
    normalized = (f"normalized with mean {pre['mean']} and std {pre['std']}" if pre.get("mean") is not None
                  else "not normalized")
    return (f"Input: {pre['channels']}-channel images, the shorter side resized to {height} and the center "
            f"{height} x {width} kept (bilinear), scaled to [0, 1] and {normalized}, as in training; the folder's "
            f"config.json carries these (`timm.data.resolve_data_config({{}}, model=model)`).")


def license_text(license: str, folder: Optional[RunFolder]) -> str:
    init = folder.read_init() if folder else None
    inherited = sorted({str(v) for v in ((init or {}).get("licences") or {}).values()})
    text = (f"`{license}`, as given at export (`--license`)." if license != "other" else
            "Not chosen at export (`--license ID` sets a Hugging Face licence identifier); the terms of the "
            "training data apply.")
    if inherited:
        text += f" The initial weights were under: {', '.join(inherited)}; weights derived from them may be too."
    return text


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
