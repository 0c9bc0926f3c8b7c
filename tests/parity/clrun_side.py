"""cl-run's side of the DINO parity tests: cl-run's own training loop on the fixture's views and weights.

``run_clrun(variant)`` runs ``clrun.train`` (unmodified) on a recipe that is the official flags written as recipe
lines (``recipe_text``), on the very views and initial weights ``fixtures/dino_official.json`` was made with,
in float64, and records per step what the fixture records; ``compare`` puts the two side by side. The tests are
``test_dino_parity.py``; ``harness_dino.py`` is a command line over this module for looking at a difference.

The recipe uses cl-run's own options where the official code differs from cl-run's defaults:

* ``--clip_grad 3.0`` (``utils.clip_gradients``: each parameter's gradient to norm 3 on its own):
  ``train.grad_clip_mode: per_parameter``;
* ``--warmup_epochs 1`` (``utils.cosine_scheduler``: the warm-up is ``np.linspace(0, peak, W)``, its last step
  at the peak): ``scheduler: {name: clrun/warmup_cosine, warmup_ends_at_peak: true}``;
* ``--warmup_teacher_temp_epochs 2`` (``np.linspace(0.04, 0.07, 2)`` indexed by epoch):
  ``teacher_temperature: {schedule: linear, start: 0.04, end: 0.07, until_epoch: 1, per: epoch}``.

One difference is deliberate and stays: timm resamples a ViT's position embeddings for the 14 px local crops
with antialiasing, at ``size``; the official ``interpolate_pos_encoding`` does not (README.md). ``multicrop``
matches only with ``official_resample=True`` (timm's function replaced for the run); ``global_only`` resamples
nothing.

How the fixture's views get into cl-run's loop, through its component API (``clrun.Component`` in a registry
of its own for the run: ``parity_registry``):

* ``parity/views`` (a ``dataset``, a ``clrun.Stream``): epoch ``e`` yields, in order, the 80 items of steps
  ``10 e .. 10 e + 9``; item (step s, image b) is a blank uint8 image with ``s`` and ``b`` written in its first
  two pixels. A stream, because the loop takes its order as is (a map-style data set goes through a shuffling
  sampler); the loop passes it the seed ``recipe.seed * 100003 + epoch``, so the epoch with seed 0.
* ``parity/crop`` (an ``augmentation``, ``crop: k``): reads (s, b) back from those pixels and returns crop
  ``k`` of image ``b`` at step ``s``, rendered beforehand by ``views.render`` in float64. One view entry per
  crop (global 1, global 2, then the local ones with ``local: true``), no ``data.mean``/``std`` (the crops are
  normalized already).
* ``parity/recorder`` (a ``callback``, ``Recorder``): observation only.

The initial weights go in through the recipe's ``init:`` section (a checkpoint-shaped file in a temporary
folder): student and teacher alike (the target copies the online network). Everything runs in float64:
``torch.set_default_dtype(torch.float64)`` while ``clrun.train`` builds and trains (cl-run has no float64
precision setting; every part follows the default dtype, and the crops bypass ``views.to_float``'s float32
cast because ``parity/crop`` ignores its input's values). The loss is read from the loss's forward hook, in
float64 (the step's own metrics are float32).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator

import torch
from torch import nn

from tests.parity import views as V
from tests.parity import weights as W
from tests.parity.make_dino import (
    CHECKSUM_STEPS,
    EPOCHS,
    STEPS_PER_EPOCH,
    STUDENT_TENSORS,
    TEACHER_TENSORS,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dino_official.json"
STEPS = EPOCHS * STEPS_PER_EPOCH
DATA_ROOT = V.DEFAULT_ROOT  # Fashion-MNIST's idx files (Debian's dataset-fashion-mnist); CI installs it
# torch versions move float64 results at the 1e-15 level (reduction order, AdamW's kernels); the runs below
# match the fixture within a few 1e-15 relative, so 1e-10 leaves room for that and catches any real change.
RTOL = 1e-10
CLIP = 3.0  # --clip_grad 3.0
CLIP_EPSILON = 1e-6  # utils.clip_gradients: clip / (norm + 1e-6)

# ------------------------------------------------------------------------------------------------ the recipe
# What every parity recipe (MAE's too) ends with: no health checks, the recorder, the run folder.
RECIPE_END = """\
health:
  enabled: false
callbacks:
  - name: parity/recorder
run:
  dir: {run_dir}
"""

# The official flags (fixture["official"]["flags"]) as recipe lines, spelled as the repository's ImageNet DINO
# recipe spells them (recipes/dino_vits16.yaml).
RECIPE = """\
seed: 0
data:
  dataset: {{name: parity/views}}
  batch_size: 8                      # --batch_size_per_gpu 8, one process
  num_workers: 0
  # no mean/std: parity/crop hands out the crops normalized, as views.render makes them
views:
{views}
backbone:                            # --arch vit_tiny made tiny (weights.TIMM_ARGS), --drop_path_rate 0
  name: timm/vit_tiny_patch16_224
  in_chans: 1
  img_size: 28
  drop_path_rate: 0.0
  model_args: {{patch_size: 7, embed_dim: 64, depth: 2, num_heads: 2, dynamic_img_size: true}}
projector:                           # DINOHead(64, 64, hidden 64, bottleneck 32), --norm_last_layer true
  name: clrun/dino_head
  out_dim: 64                        # --out_dim 64
  hidden_dim: 64
  bottleneck_dim: 32
  num_layers: 3
  batch_norm: false                  # --use_bn_in_head false
  norm_last_layer: true
target:                              # --momentum_teacher 0.996, cosine to 1
  momentum: 0.996
  final_momentum: 1.0
loss:
  name: clrun/dino
  # --warmup_teacher_temp 0.04 --teacher_temp 0.07 --warmup_teacher_temp_epochs 2: linspace(0.04, 0.07, 2)[epoch]
  teacher_temperature: {{schedule: linear, start: 0.04, end: 0.07, until_epoch: 1, per: epoch}}
  student_temperature: 0.1
  center_momentum: 0.9
optimizer:                           # --optimizer adamw, --lr 0.016 x 8 / 256 = 5e-4
  name: torch/AdamW
  lr: 5.0e-4
  weight_decay: {{schedule: cosine, start: 0.04, end: 0.4}}   # --weight_decay 0.04 --weight_decay_end 0.4
scheduler:                           # --warmup_epochs 1 --min_lr 1e-6: utils.cosine_scheduler
  name: clrun/warmup_cosine
  warmup_epochs: 1
  min_lr: 1.0e-6
  warmup_ends_at_peak: true          # linspace(0, peak, 10): step 9 at the peak
params:
  groups:
    - match: [projector.last_layer.*]
      frozen_epochs: 1               # --freeze_last_layer 1
init:
  backbone: {{source: {weights}}}
  projector: {{source: {weights}}}
train:
  epochs: 3
  device: cpu
  threads: 1
  precision: fp32                    # the dtype is float64 all the same: torch's default dtype, set here
  grad_clip: 3.0                     # --clip_grad 3.0
  grad_clip_mode: per_parameter      # utils.clip_gradients: each parameter's gradient on its own
  log_every: 1
  progress: false
""" + RECIPE_END


def views_yaml(crops: int) -> str:
    lines = []
    for k in range(crops):
        local = k >= V.GLOBAL_CROPS
        lines.append(f"  - name: {'local' if local else 'global'}{k + 1}")
        if local:
            lines.append("    local: true")
        lines.append(f"    transforms: [{{name: parity/crop, crop: {k}}}]")
    return "\n".join(lines)


def crops_of(variant: str) -> int:
    return V.GLOBAL_CROPS + (V.LOCAL_CROPS if variant == "multicrop" else 0)


def recipe_text(variant: str, weights_file: str, run_dir: str) -> str:
    return RECIPE.format(views=views_yaml(crops_of(variant)), weights=weights_file, run_dir=run_dir)


# -------------------------------------------------------------------------------------------- the fixture side
def load_fixture() -> dict:
    return json.loads(FIXTURE.read_text())


@lru_cache(maxsize=None)
def _images(data_root: str) -> torch.Tensor:
    return V.load_train_images(data_root)[0]


@lru_cache(maxsize=None)
def rendered_crops(crops: int, data_root: str = str(DATA_ROOT)) -> tuple[tuple[torch.Tensor, ...], ...]:
    """``[step][crop]``: (8, 1, S, S) float64, as the official run saw them (rendered once per process)."""
    spec, images = V.make_spec(0), _images(data_root)
    return tuple(tuple(V.render(spec, step, images, crops=range(crops))) for step in range(V.STEPS))


def clrun_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights.initial_weights`` in a cl-run checkpoint's network names (``backbone.``, ``projector.``)."""
    network = {}
    for name, t in weights.items():
        part, _, rest = name.partition(".")
        network[("projector." + W.HEAD_TO_PARAMETRIZED.get(rest, rest)) if part == "head" else name] = t
    return network


def official_name(name: str) -> str:
    """A cl-run network name (``backbone.``, ``projector.``) -> the fixture's (``backbone.``, ``head.``)."""
    part, _, rest = name.partition(".")
    if part == "projector":
        back = {v: k for k, v in W.HEAD_TO_PARAMETRIZED.items()}
        return "head." + back.get(rest, rest)
    return name


# ------------------------------------------------------------------------------------------ the components
def _stream_class():
    from clrun.streams import Stream

    class _ParityViews(Stream):
        """Epoch ``seed`` (the loop's seed is ``recipe.seed * 100003 + epoch``; recipe seed 0) of the fixture's
        steps, in order: item (step, image) is a blank image with the two numbers in its first pixels."""

        name = "parity/views"
        epoch_size = STEPS_PER_EPOCH * V.BATCH

        def records(self, reader: int, readers: int, seed: int):
            assert readers == 1 and 0 <= seed < EPOCHS, (reader, readers, seed)
            for step in range(seed * STEPS_PER_EPOCH, (seed + 1) * STEPS_PER_EPOCH):
                for b in range(V.BATCH):
                    yield step, b

        def decode(self, record):
            step, b = record
            image = torch.zeros(1, V.SOURCE, V.SOURCE, dtype=torch.uint8)
            image[0, 0, 0], image[0, 0, 1] = step, b
            return image, -1

    return _ParityViews


class ParityCrop(nn.Module):
    """Crop ``crop`` (0, 1: global; 2, 3: local) of the images whose (step, image) the pixels carry."""

    def __init__(self, crops, crop: int = 0) -> None:
        super().__init__()
        self.crops, self.crop = crops, crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = (x[:, 0, 0, :2].double() * 255).round().long().tolist()  # to_float: uint8 / 255, float32
        return torch.stack([self.crops[step][self.crop][b] for step, b in codes])


class EnoughSteps(Exception):
    """Raised by the recorder after ``stop_after``: a run cut short on purpose (its schedules unchanged, which
    ``train.max_steps`` would shorten)."""


class Recorder:
    """``parity/recorder``: observation only. ``steps[k]``: what step k (from 0) did, in the fixture's keys;
    ``checksums``: the fixture's tensors before step 0 (``initial``) and after steps 0, 10, 20, 29.

    * a forward hook on the loss: loss (float64), teacher temperature, center norm (after the loss's update),
      student/teacher output checksums;
    * a post-accumulate-grad hook on every online parameter (torch's own hook, run as the backward writes
      ``.grad``, before cl-run clips): each gradient's norm, as the official ``clip_gradients`` returns them. Not
      a wrapper around cl-run's clipping function: ``clrun.training.step`` binds ``clip_gradients`` by name,
      and the norms are what is compared, whichever ``train.grad_clip_mode`` clips;
    * an optimizer step pre-hook: the gradients AdamW steps with (after clipping and freezing), lr and weight
      decay of each group;
    * ``clrun_step_end`` (``train.log_every: 1``: after the step's update and EMA): the momentum used, the
      checksums.
    """

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.steps: list[dict] = [dict() for _ in range(STEPS)]
        self.checksums: dict[str, dict] = {}
        self.param_groups: list[list[str]] = []
        self.group_settings: list[dict] = []
        self.dtypes: list[str] = []
        self.run = None
        self._norms: dict[str, float] = {}

    @staticmethod
    def named(network) -> dict[str, torch.Tensor]:
        """The online or target network's parameters under the fixture's names."""
        return {official_name(n): p for n, p in
                [*(("backbone." + k, v) for k, v in network.backbone.named_parameters()),
                 *(("projector." + k, v) for k, v in network.projector.named_parameters())]}

    def snapshot(self) -> dict:
        parts = self.run.parts
        s, t = self.named(parts.network), self.named(parts.target)
        return {"student": {n: W.checksums(s[n]) for n in STUDENT_TENSORS},
                "teacher": {n: W.checksums(t[n]) for n in TEACHER_TENSORS},
                "center": W.checksums(parts.loss_fn.center)}

    def recorded_steps(self) -> int:
        return sum(1 for s in self.steps if "momentum" in s)

    # ---- cl-run's callback hooks
    def clrun_run_start(self, run) -> None:
        self.run = run
        # run.parts is cl-run's internal bundle (docs/guides/plugins.md: "internal and may change"): the target,
        # the loss and the optimizer are nowhere public, and the comparison needs all three. Only read here.
        parts = run.parts
        named = self.named(parts.network)
        self.names = {id(p): n for n, p in named.items()}
        self.param_groups = [sorted(self.names[id(p)] for p in g["params"]) for g in parts.optimizer.param_groups]
        self.group_settings = [{k: v for k, v in g.items() if k != "params"} for g in parts.optimizer.param_groups]
        self.dtypes = sorted({str(p.dtype) for p in parts.network.parameters()} |
                             {str(p.dtype) for p in parts.target.parameters()} | {str(parts.loss_fn.center.dtype)})
        self.checksums["initial"] = self.snapshot()
        hook_up(self, parts, named)

    def loss_hook(self, module, inputs, output) -> None:
        (out,) = inputs
        student = torch.cat([p.detach() for p in out.online.projections])
        teacher = torch.cat([p.detach() for p in out.target.projections])
        self.steps[self.run.step].update({
            "step": self.run.step, "epoch": self.run.epoch, "loss": float(output["loss"].detach()),
            "loss_dtype": str(output["loss"].dtype),
            "teacher_temp": float(module.teacher_temperature), "center_norm": float(module.center.norm()),
            "student_output": W.checksums(student), "teacher_output": W.checksums(teacher),
        })

    def gradient_hook(self, name: str, p: torch.Tensor) -> None:
        self._norms[name] = float(torch.linalg.vector_norm(p.grad.detach()))

    def step_pre_hook(self, optimizer, *_) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        before, self._norms = self._norms, {}
        self.steps[self.run.step].update({
            # utils.clip_gradients' norms, before clipping (the frozen last layer's included, as it clips first)
            "grad_norm_before_clip": math.sqrt(sum(n * n for n in before.values())),
            "params_clipped": sum(1 for n in before.values() if CLIP / (n + CLIP_EPSILON) < 1),
            "grad_norm_stepped": math.sqrt(sum(float((g * g).sum()) for g in grads)),
            "params_without_grad": sorted(self.names[id(p)] for g in optimizer.param_groups for p in g["params"]
                                          if p.grad is None),
            "lr_groups": [float(g["lr"]) for g in optimizer.param_groups],
            "weight_decay_groups": [float(g["weight_decay"]) for g in optimizer.param_groups],
        })

    def clrun_step_end(self, run, step: int, metrics: dict) -> None:
        k = step - 1  # counted from 1
        self.steps[k]["momentum"] = float(metrics["target_momentum"])
        if k in CHECKSUM_STEPS:
            self.checksums[str(k)] = self.snapshot()
        if self.stop_after is not None and k >= self.stop_after:
            raise EnoughSteps(f"parity: stopped after step {k} on purpose")


def hook_up(recorder, parts, named: dict[str, torch.Tensor]) -> None:
    """A recorder's hooks into the run (``parts``: cl-run's bundle): ``recorder.loss_hook`` on the loss's forward,
    ``recorder.step_pre_hook`` before each optimizer step, and ``recorder.gradient_hook(name, p)`` as the backward
    writes the gradient of each trainable parameter of ``named``."""
    parts.loss_fn.register_forward_hook(recorder.loss_hook)
    parts.optimizer.register_step_pre_hook(recorder.step_pre_hook)
    for name, p in named.items():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p, name=name: recorder.gradient_hook(name, p))


@contextlib.contextmanager
def parity_registry(crops, recorder, extra: Iterable = ()) -> Iterator[None]:
    """cl-run's process-wide registry replaced, for the block, by a fresh one with the three parity components
    (and the ``clrun.Component`` objects of ``extra``: another method's, MAE's mask generator).

    ``clrun.load_recipe`` and ``clrun.train`` resolve names in ``plugin_manager.default_registry()``; adding the
    components to that one would leave them behind for whatever the process runs next (other tests list the
    registered components), so a fresh registry (``load_registry``: the built-ins and plugins, milliseconds)
    gets them and the previous one is put back afterwards."""
    import clrun
    from clrun import plugin_manager

    previous = plugin_manager.default_registry()
    registry = plugin_manager.load_registry()
    stream = _stream_class()

    def crop(crop: int = 0) -> nn.Module:
        return ParityCrop(crops, crop)

    registry.add_all([
        clrun.Component("dataset", "parity/views", lambda: stream(), "the parity fixture's steps, in order"),
        clrun.Component("augmentation", "parity/crop", crop, "one of the fixture's rendered crops"),
        clrun.Component("callback", "parity/recorder", lambda: recorder, "records a parity run"),
        *extra,
    ], "tests.parity.clrun_side")
    plugin_manager.set_default_registry(registry)
    try:
        yield
    finally:
        plugin_manager.set_default_registry(previous)


@contextlib.contextmanager
def official_resample() -> Iterator[None]:
    """timm's ``resample_abs_pos_embed`` replaced by the official ``interpolate_pos_encoding``
    (``weights.official_resample_abs_pos_embed``) for the block: the deliberate difference, for ``multicrop``."""
    from unittest import mock

    import timm.models.vision_transformer as timm_vit

    with mock.patch.object(timm_vit, "resample_abs_pos_embed", W.official_resample_abs_pos_embed):
        yield


# ------------------------------------------------------------------------------------------------ a run
@dataclass
class Result:
    variant: str
    recorder: Recorder
    recipe: str
    train_seconds: float


def run_clrun(variant: str, *, resample: bool = False, overrides: Iterable[str] = (), stop_after: int | None = None,
              patches: Iterable[Callable[[], ContextManager]] = (), data_root: Path = DATA_ROOT,
              keep: Path | None = None) -> Result:
    """cl-run's 30 steps of ``variant`` (``global_only`` or ``multicrop``) on the fixture's views and weights.

    ``resample``: with the official position-embedding resampling (``official_resample``); ``overrides``:
    recipe lines ``key=value`` on top of ``recipe_text`` (what ``cl-run train`` takes); ``stop_after``: stop
    after that step (counted from 0; the schedules stay those of 30 steps); ``patches``: context managers
    entered around the run (the tests' reintroduced bugs); ``keep``: keep the run folder there and show cl-run's
    output (else a temporary folder, output discarded)."""
    import clrun

    crops = rendered_crops(crops_of(variant), str(data_root))
    recorder = Recorder(stop_after)
    with contextlib.ExitStack() as stack:
        folder = run_folder(stack, keep, "clrun-parity-dino-")
        weights_file = folder / "initial.pt"
        torch.save({"network": clrun_names(W.initial_weights(0))}, weights_file)
        text = recipe_text(variant, str(weights_file), str(folder / "runs"))
        (folder / "recipe.yaml").write_text(text)
        stack.enter_context(parity_registry(crops, recorder))
        recipe = clrun.load_recipe(folder / "recipe.yaml", list(overrides))
        seconds = train_in_float64(stack, recipe, [official_resample, *patches] if resample else patches,
                                   stop_after=stop_after, quiet=keep is None)
    return Result(variant, recorder, text, seconds)


def run_folder(stack: contextlib.ExitStack, keep: Path | None, prefix: str) -> Path:
    """The run's folder: ``keep`` (made if missing), else a temporary one that ``stack`` removes."""
    folder = keep if keep is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def train_in_float64(stack: contextlib.ExitStack, recipe, patches: Iterable[Callable[[], ContextManager]], *,
                     stop_after: int | None, quiet: bool) -> float:
    """``clrun.train(recipe)`` with torch's default dtype float64, ``patches`` entered (in order) and warnings
    off, cl-run's output discarded when ``quiet``; returns the seconds it took. A run the recorder stops after
    ``stop_after`` ends normally. The dtype, the thread count and the rest are put back as ``stack`` closes."""
    import clrun

    stack.callback(torch.set_num_threads, torch.get_num_threads())  # train.threads: 1 sets the process's threads
    stack.callback(torch.set_default_dtype, torch.get_default_dtype())
    torch.set_default_dtype(torch.float64)
    for patch in patches:
        stack.enter_context(patch())
    # cl-run's warnings (the float64 parts, the stream's size) are about a real run, not this one
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    if quiet:
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    started = time.perf_counter()
    try:
        clrun.train(recipe)
    except Exception as exc:
        if stop_after is None or not _caused_by(exc, EnoughSteps):
            raise
    return time.perf_counter() - started


def _caused_by(exc: BaseException | None, kind: type) -> bool:
    """Whether ``exc`` or an exception it was raised from is a ``kind`` (cl-run wraps a callback's error)."""
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# ------------------------------------------------------------------------------------------------ comparison
def rel(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if a == b else abs(a - b) / scale if scale > 0 else math.inf


def flat(prefix: str, value) -> dict[str, float]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flat(f"{prefix}.{k}" if prefix else k, v))
        return out
    if isinstance(value, list):
        if len(value) == 2 and all(isinstance(x, float) for x in value):
            return {f"{prefix}.sum": value[0], f"{prefix}.sumsq": value[1]}
        return {f"{prefix}[{i}]": x for i, x in enumerate(value)}
    return {prefix: float(value)}


@dataclass
class Row:
    """One quantity over the steps compared: the first step over ``RTOL`` (None: none) with both values there,
    the largest relative and absolute deviation and the step of the largest relative one."""

    first: int | str | None = None
    first_rel: float | None = None
    official_at_first: float | None = None
    clrun_at_first: float | None = None
    max_rel: float = 0.0
    at: int | str | None = None
    max_abs: float = 0.0
    compared: int = 0

    def add(self, step, a: float, b: float) -> None:
        r, d = rel(a, b), abs(a - b)
        self.compared += 1
        if r > RTOL and self.first is None:
            self.first, self.first_rel, self.official_at_first, self.clrun_at_first = step, r, a, b
        if r > self.max_rel or self.at is None:
            self.max_rel, self.at = max(r, self.max_rel), step
        self.max_abs = max(self.max_abs, d)


SCALARS = ("loss", "teacher_temp", "center_norm", "grad_norm_before_clip", "grad_norm_stepped", "momentum")


def compare(fixture_run: dict, recorder: Recorder) -> dict[str, Row]:
    """Per quantity, over the steps ``recorder`` recorded (all 30 unless stopped early): a ``Row``.
    Lists (``params_without_grad``, the groups' members) are compared as 0 (same) or 1 (different)."""
    rows: dict[str, Row] = {}

    def add(quantity: str, step, a: float, b: float) -> None:
        rows.setdefault(quantity, Row()).add(step, a, b)

    official_groups = [sorted(g) for g in fixture_run["param_groups"]]
    mine = recorder.param_groups
    # official groups: 0 decayed (last_layer.weight_v too), 1 not; cl-run: 0 decayed, 1 not, 2 the last layer's
    add("param_groups", "start", 0.0, float(sorted(mine[0] + (mine[2] if len(mine) > 2 else [])) != official_groups[0]
                                            or mine[1] != official_groups[1]))
    for k in range(recorder.recorded_steps()):
        official, ours = fixture_run["steps"][k], recorder.steps[k]
        for key in SCALARS:
            add(key, k, official[key], ours[key])
        for key in ("student_output", "teacher_output"):
            for i, name in enumerate(("sum", "sumsq")):
                add(f"{key}.{name}", k, official[key][i], ours[key][i])
        lr, wd = ours["lr_groups"], ours["weight_decay_groups"]
        add("lr[decayed]", k, official["lr"][0], lr[0])
        add("lr[not decayed]", k, official["lr"][1], lr[1])
        add("weight_decay[decayed]", k, official["weight_decay"][0], wd[0])
        add("weight_decay[not decayed]", k, official["weight_decay"][1], wd[1])
        if len(lr) > 2:
            add("lr[last layer]", k, official["lr"][0], lr[2])
            add("weight_decay[last layer]", k, official["weight_decay"][0], wd[2])
        add("params_clipped", k, float(official["params_clipped"]), float(ours["params_clipped"]))
        add("params_without_grad", k, 0.0,
            float(sorted(official["params_without_grad"]) != ours["params_without_grad"]))
    for when, official in fixture_run["checksums"].items():
        if when in recorder.checksums:
            ours = flat("", recorder.checksums[when])
            for name, a in flat("", official).items():
                add(f"checksum {name}", when, a, ours[name])
    return rows


def departures(rows: dict[str, Row]) -> dict[str, Row]:
    return {q: r for q, r in rows.items() if r.first is not None}


def first_departure(rows: dict[str, Row]) -> tuple[int | None, list[str]]:
    """The first step at which any per-step quantity or checksum departs, and the quantities departing there."""
    order = lambda step: int(step) if str(step).isdigit() else -1  # noqa: E731  ("start": the groups)
    bad = departures(rows)
    if not bad:
        return None, []
    first = min(order(r.first) for r in bad.values())
    return first, sorted(q for q, r in bad.items() if order(r.first) == first)


def table(rows: dict[str, Row], every: bool = False) -> str:
    """The rows as a text table: the departing ones, or ``every`` one."""
    shown = {q: r for q, r in rows.items() if every or r.first is not None}
    if not shown:
        return f"(all {len(rows)} quantities within {RTOL:g} relative)"
    width = max(len(q) for q in shown)
    fmt = lambda v: "" if v is None else f"{v:.16g}"  # noqa: E731
    lines = [f"{'quantity':<{width}}  {'first > ' + format(RTOL, 'g'):>13}  {'rel there':>9}  {'official there':>22}  "
             f"{'cl-run there':>22}  {'max rel':>9} {'(step)':>6}  {'max abs':>9}"]
    for quantity, row in shown.items():
        lines.append(f"{quantity:<{width}}  {'' if row.first is None else str(row.first):>13}  "
                     f"{'' if row.first_rel is None else format(row.first_rel, '.2e'):>9}  "
                     f"{fmt(row.official_at_first):>22}  {fmt(row.clrun_at_first):>22}  "
                     f"{row.max_rel:9.2e} {str(row.at):>6}  {row.max_abs:9.2e}")
    return "\n".join(lines)


def verdict(rows: dict[str, Row], every: bool, started: float) -> int | None:
    """What a harness prints after a run: the table (``every`` row or the departing ones), MATCH or the first
    departure (-1: the start, the groups), the wall time since ``started``. Returns the first departing step
    (None: everything matches)."""
    print(table(rows, every=every))
    step, quantities = first_departure(rows)
    if step is None:
        largest = max(r.max_rel for r in rows.values())
        print(f"MATCH (relative tolerance {RTOL:g}; the largest deviation {largest:.2e})")
    else:
        print(f"DIFFERENT from step {'the start' if step < 0 else step}: {', '.join(quantities)}")
    print(f"wall time {time.perf_counter() - started:.1f} s")
    return step


def harness_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both harnesses (harness_dino.py, harness_mae.py) take after their own."""
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="a recipe override")
    parser.add_argument("--stop-after", type=int, help="stop after this step (from 0); the schedules stay 30 steps'")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--keep", type=Path, help="keep the run folder here (and show cl-run's output)")
    parser.add_argument("--json", type=Path, help="write the per-step records here")
    parser.add_argument("-v", "--verbose", action="store_true", help="every quantity, also those that match")


# ------------------------------------------------------------------------------------- the differences found
@contextlib.contextmanager
def ema_weight_in_float32() -> Iterator[None]:
    """The EMA bug, back: the gated weight ``1 - m`` made in float32 (``healthy.to(torch.float32) * step``, as
    the target's update did), which rounds 0.004 to 0.0040000002 when the parameters are float64."""
    from unittest import mock

    from clrun.training.parallel import compat

    lerp = compat.foreach_lerp_

    def rounded(tensors, ends, weight):
        return lerp(tensors, ends, weight.to(torch.float32) if isinstance(weight, torch.Tensor) else weight)

    with mock.patch.object(compat, "foreach_lerp_", rounded):
        yield


@contextlib.contextmanager
def teacher_with_drop_path() -> Iterator[None]:
    """The drop-path bug, back: the target's copy keeps the online network's stochastic depth (nothing removes
    it: ``target.without_random_drops`` does nothing)."""
    from unittest import mock

    from clrun.training.model import target

    with mock.patch.object(target, "without_random_drops", lambda network: None):
        yield


@dataclass(frozen=True)
class Difference:
    """A difference the comparison found, as the run reintroduces it: recipe overrides (an option set back to
    cl-run's default) and/or patches (a fixed bug put back); ``base``: overrides the fixed run needs too
    (the drop-path difference shows only with a student drop path)."""

    what: str
    overrides: tuple[str, ...] = ()
    patches: tuple[Callable[[], ContextManager], ...] = ()
    base: tuple[str, ...] = ()


DIFFERENCES: dict[str, Difference] = {
    "global_norm_clipping": Difference(
        "the global norm clipped to 3 (cl-run's default) instead of each parameter's gradient",
        overrides=("train.grad_clip_mode=global_norm",)),
    "warmup_a_step_longer": Difference(
        "the lr warm-up as timm's (step k of W at k/W of the peak) instead of np.linspace(0, peak, W)",
        overrides=("scheduler.warmup_ends_at_peak=false",)),
    "teacher_temperature_per_step": Difference(
        "the teacher temperature ramped per step instead of held per epoch",
        overrides=("loss.teacher_temperature.per=step",)),
    "ema_weight_float32": Difference(
        "the EMA weight 1 - m rounded to float32 (the bug fixed in clrun.training.model.target)",
        patches=(ema_weight_in_float32,)),
    "teacher_drop_path": Difference(
        "the target's copy with the student's drop path 0.1 (the bug fixed in clrun.training.model.target)",
        patches=(teacher_with_drop_path,), base=("backbone.drop_path_rate=0.1",)),
}
