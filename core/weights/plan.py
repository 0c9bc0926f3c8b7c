"""The ``init:`` section carried out: each named part of the freshly built online network loaded from its
source, the target's starting weights chosen, and what the weights were trained with compared with the
recipe. ``cl-run check`` shows the plan; a run records it in its folder (``RunFolder.init``), its report
and its export (sources, SHA-256, licences).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import Tensor, nn

from clrun.errors import UserError
from clrun.plugin_manager import default_registry
from clrun.recipe.schema import InitSource, Recipe
from clrun.weights.files import NotDownloaded, hub_repository, read_source
from clrun.weights.layout import PARTS, Trained, WeightsFile, WeightsLayout
from clrun.weights.loading import PartReport, adapt, load_part
from clrun.weights.own_layouts import OWN_LAYOUTS

# Networks a file may hold that a momentum target starts from, in order of preference.
TARGET_NETWORKS = ("teacher", "target")
TARGET_PARTS = ("backbone", "projector")  # what a target network holds


@dataclass
class InitPlan:
    """What ``init:`` loads where. ``target``: the target network's starting tensors by part (already in
    the online modules' names), for the parts that come from a file's teacher; None: a copy of the online."""

    reports: list[PartReport] = field(default_factory=list)
    target: Optional[dict[str, dict[str, Tensor]]] = None
    warnings: list[str] = field(default_factory=list)
    licences: dict[str, str] = field(default_factory=dict)  # source -> licence, where the layout knows it

    def lines(self) -> list[str]:
        """The plan, one line per loaded part, then the warnings: what ``cl-run check`` prints."""
        return [r.summary() for r in self.reports] + [f"warning: {w}" for w in self.warnings]

    def record(self) -> dict[str, Any]:
        """The run folder's record of it (JSON)."""
        return {"parts": [r.record() for r in self.reports], "warnings": self.warnings, "licences": self.licences}


def plan_init(recipe: Recipe, network: nn.Module, eval_size: tuple[int, int], download: bool = True) -> Optional[InitPlan]:
    """Carry out ``recipe.init`` on ``network`` (the online network, on the CPU, before anything copies it).
    ``download=False`` (``cl-run check``): a Hub repository that is not cached, or a file that does not exist
    yet, is reported as such and its part left at random weights; the rest is checked and loaded."""
    if recipe.init is None:
        return None
    plan, files = InitPlan(), _Files(download)
    teacher_parts: dict[str, tuple[WeightsFile, str, str]] = {}  # part -> (file, layout name, teacher network)
    for part in PARTS:
        entry: Optional[InitSource] = getattr(recipe.init, part)
        if entry is None:
            continue
        key = f"init.{part}"
        module = getattr(network, part, None)
        if module is None:
            raise UserError(f"{key}: the recipe has no {part} to load weights into; remove {key} or add a "
                            f"{'masking.head' if part == 'token_head' else part}: section")
        report = PartReport(part, entry.source, entry.layout, entry.network)
        plan.reports.append(report)
        file = files.read(entry.source, key, report)
        if file is None:
            continue  # downloaded at training
        layout_name, layout = choose_layout(file, entry.layout, key)
        chosen = choose_network(layout, file, entry.network, key)
        report.layout, report.network = layout_name, chosen
        report.sha256, report.revision = file.sha256, file.revision
        state = part_state(layout, file, chosen, part, key, layout_name)
        load_part(module, adapt(module, part, state, report), report, entry.strict, key)
        _compare(layout.trained(file), recipe, eval_size, key, entry.source, plan)
        _resampled_kernels(report, key, plan)
        if (teacher := _teacher(layout, file)) is not None and part in TARGET_PARTS:
            teacher_parts[part] = (file, layout_name, teacher)
    if recipe.target is not None:
        plan.target = _target_state(recipe, network, files, teacher_parts, plan)
    return plan


def all_layouts() -> dict[str, WeightsLayout]:
    """Every weights layout by name: the registered components, and cl-run's own where not registered."""
    layouts = {c.name: c.factory() for c in default_registry().list("weights_layout")}
    return {**layouts, **{name: kind() for name, kind in OWN_LAYOUTS.items() if name not in layouts}}


def choose_layout(file: WeightsFile, name: str, key: str) -> tuple[str, WeightsLayout]:
    """The layout the recipe names, or the one that recognizes the file (fallbacks last)."""
    layouts = all_layouts()
    if name != "auto":
        if name not in layouts:
            raise UserError(f"{key}.layout: no weights layout {name!r}; the layouts are {', '.join(sorted(layouts))} "
                            f"(`cl-run components weights_layout`), or auto")
        if not layouts[name].recognizes(file):
            raise UserError(f"{key}: {file.source} is not a {name} file ({_holds(file)}); set {key}.layout: auto or "
                            f"the layout of its family")
        return name, layouts[name]
    specific = [n for n, layout in layouts.items() if not getattr(layout, "fallback", False) and layout.recognizes(file)]
    if len(specific) > 1:
        raise UserError(f"{key}: {file.source} looks like a file of {' and of '.join(specific)}; name its layout "
                        f"({key}.layout: {specific[0]})")
    if not specific:
        specific = [n for n, layout in layouts.items() if getattr(layout, "fallback", False) and layout.recognizes(file)]
    if not specific:
        raise UserError(f"{key}: {file.source} is not a weight file of a layout cl-run knows ({_holds(file)}); the "
                        f"layouts are {', '.join(sorted(layouts))}: convert it to a state dict of the model's tensors, or "
                        f"install a plugin with its weights_layout")
    return specific[0], layouts[specific[0]]


def choose_network(layout: WeightsLayout, file: WeightsFile, name: str, key: str) -> str:
    networks = layout.networks(file)
    if name == "auto":
        return networks[0]
    if name not in networks:
        raise UserError(f"{key}.network: {file.source} holds no network {name!r}; it holds {', '.join(networks)}")
    return name


def part_state(layout: WeightsLayout, file: WeightsFile, network: str, part: str, key: str,
               layout_name: str) -> dict[str, Tensor]:
    parts = layout.parts(file, network)
    if part not in parts or not parts[part]:
        held = ", ".join(p for p in parts if parts[p]) or "nothing cl-run loads"
        raise UserError(f"{key}: {file.source} ({layout_name}, network {network}) holds no {part}; it holds {held}")
    return parts[part]


class _Files:
    """Each source read once, whichever parts it serves."""

    def __init__(self, download: bool) -> None:
        self.download = download
        self.read_files: dict[str, Optional[WeightsFile]] = {}
        self.pending: dict[str, Optional[str]] = {}  # why a source was not read (check only)

    def read(self, source: str, key: str, report: Optional[PartReport] = None) -> Optional[WeightsFile]:
        if source not in self.read_files:
            self.read_files[source], self.pending[source] = None, None
            if not self.download and hub_repository(source) is None and not Path(source).expanduser().exists():
                # `cl-run check` of a recipe whose weights an earlier run will write (a pipeline's second step).
                self.pending[source] = (f"{source} does not exist yet: checked on random weights; training stops here "
                                        f"unless it exists by then")
            else:
                try:
                    self.read_files[source] = read_source(source, key, self.download)
                except NotDownloaded:
                    self.pending[source] = ("downloaded at training (not in the local Hugging Face cache); checked on "
                                            "random weights")
        if report is not None:
            report.pending = self.pending[source]
        return self.read_files[source]


def _teacher(layout: WeightsLayout, file: WeightsFile) -> Optional[str]:
    """The network of ``file`` a momentum target starts from: its teacher (or target), if it has one."""
    return next((n for n in TARGET_NETWORKS if n in layout.networks(file)), None)


def _target_state(recipe: Recipe, network: nn.Module, files: _Files,
                  teacher_parts: dict[str, tuple[WeightsFile, str, str]], plan: InitPlan):
    """The target's starting tensors: ``init.target``'s network, else the teacher of the files the online parts
    came from; checked against the online modules (the target is their copy)."""
    entry = recipe.init.target
    chosen: dict[str, tuple[WeightsFile, str, WeightsLayout, str]] = {}
    if entry is not None:
        file = files.read(entry.source, "init.target")
        if file is None:
            plan.reports.append(PartReport("target", entry.source, entry.layout, entry.network,
                                           pending=files.pending.get(entry.source)))
            return None
        name, layout = choose_layout(file, entry.layout, "init.target")
        wanted = entry.network if entry.network != "auto" else (_teacher(layout, file) or layout.networks(file)[0])
        net = choose_network(layout, file, wanted, "init.target")
        held = layout.parts(file, net)
        chosen = {p: (file, name, layout, net) for p in TARGET_PARTS if held.get(p)}
    else:
        layouts = all_layouts()
        chosen = {p: (f, name, layouts[name], net) for p, (f, name, net) in teacher_parts.items()}
    states: dict[str, dict[str, Tensor]] = {}
    for part, (file, name, layout, net) in chosen.items():
        tensors = layout.parts(file, net).get(part)
        if not tensors:
            continue  # the teacher holds no such part (I-JEPA's target encoder has no head): the online copy's
        module = getattr(network, part)
        report = PartReport(f"target.{part}", file.source, name, net, sha256=file.sha256, revision=file.revision)
        state = adapt(module, part, tensors, report)
        strict = entry.strict if entry is not None else getattr(recipe.init, part).strict
        load_part(module, state, report, strict, "init.target" if entry is not None else f"init.{part}", apply=False)
        own = module.state_dict()
        states[part] = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        plan.reports.append(report)
    return states or None


def _compare(trained: Trained, recipe: Recipe, eval_size: tuple[int, int], key: str, source: str,
             plan: InitPlan) -> None:
    """Note the licence; warn where the recipe feeds the weights other images than they were trained on."""
    if trained.licence:
        plan.licences[source] = trained.licence
    data = recipe.data
    if trained.mean is not None and trained.std is not None:
        ours = (tuple(data.mean) if data.mean else None, tuple(data.std) if data.std else None)
        if ours != (trained.mean, trained.std) and not _close(ours, (trained.mean, trained.std)):
            warning = (f"{key}: the weights were trained on images normalized with mean {list(trained.mean)} and std "
                       f"{list(trained.std)}; the recipe normalizes with data.mean {ours[0]} and data.std {ours[1]}: "
                       f"set data.mean: {list(trained.mean)} and data.std: {list(trained.std)} to feed them what they know")
            if warning not in plan.warnings:
                plan.warnings.append(warning)
    if trained.image_size is not None and max(eval_size) != trained.image_size:
        plan.warnings.append(f"{key}: the weights were trained on {trained.image_size} px images; the recipe's global "
                             f"views are {eval_size[0]} x {eval_size[1]} (position embeddings are resampled)")


def _resampled_kernels(report: PartReport, key: str, plan: InitPlan) -> None:
    """Warn where a convolution kernel was resampled (a ViT's patch embedding for another patch size): unlike
    position embeddings, which follow the image size, that changes what the weights compute."""
    for line in report.resized:
        name, _, shapes = line.partition(": ")
        if name.endswith(".weight") and shapes.count(",") >= 6:  # two 4-d shapes: a kernel
            plan.warnings.append(f"{key}: {name} was resampled {shapes} (a patch size other than the weights'): the "
                                 f"features change; prefer the weights' patch size")


def _close(a: tuple, b: tuple) -> bool:
    try:
        return all(abs(x - y) < 1e-4 for u, v in zip(a, b) for x, y in zip(u, v, strict=True))
    except (TypeError, ValueError):
        return False


def _holds(file: WeightsFile) -> str:
    keys = list(file.content)[:8]
    return f"its top-level keys: {', '.join(map(str, keys))}{', ...' if len(file.content) > 8 else ''}"
