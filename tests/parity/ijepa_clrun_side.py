"""cl-run's side of the I-JEPA parity tests: cl-run's own training loop on the fixture's views, masks and weights.

``run_clrun()`` runs ``clrun.train`` (unmodified) on ``RECIPE``, the official config of ``fixtures/ijepa_official.json``
(``make_ijepa.py``) written as recipe lines, on the very batches, masks and initial weights the fixture was made
with, in float64, and records per step what the fixture records; ``compare`` puts the two side by side. The tests
are ``test_ijepa_parity.py``; ``ijepa_harness.py`` is a command line over this module.

The machinery is MAE's (``clrun_side.py``): the ``parity/views`` stream hands out (step, image) codes in the
fixture's order, ``parity/crop`` (crop 0) turns them into ``ijepa_data.render``'s float64 batch of that step,
``parity/recorder`` (here an ``IJEPARecorder``) observes, in a registry of the run's own
(``clrun_side.parity_registry``), with ``torch.set_default_dtype(torch.float64)`` around ``clrun.train``. What
I-JEPA adds:

* the masks: ``parity/fixed_mask`` (a ``mask`` component, ``FixedMasks``) answers call k (one per step: one view)
  with the official collator's masks of step k (``ijepa_data.unpack``): the context as ``visible`` (the same count
  K in every image, given as ``visible_count``), the 4 target blocks as ``targets`` (T patches each, given as
  ``target_count``), as ``clrun/multiblock_mask`` returns them; ``masking.hidden: drop`` drops the rest from the
  context encoder's sequence, as the official ``apply_masks``;
* the initial weights: ``ijepa_weights.official_checkpoint`` (src/train.py's ``save_dict``: ``encoder``,
  ``predictor``, ``target_encoder``, DDP-wrapped) loaded through ``init:`` with ``layout: clrun/ijepa`` and
  ``network: student``: cl-run's own reading of I-JEPA's checkpoints (the encoder into timm's ViT, the predictor
  into ``clrun/jepa_predictor``); the target starts from the file's ``target_encoder``;
* the predictions and targets the loss compares (checksums), and the momentum of each EMA update.

The official ViT's fixed sin-cos positions and final norm on every token are the backbone options
``sincos_pos_embed: true`` and ``model_args.fc_norm: false``, as recipes/ijepa_vith14.yaml has them. Three official
schedule behaviours took options cl-run gained for them: the schedulers are stepped before each step
(train.py:291-292, so step k uses the lr and weight decay of position k + 1: ``offset_steps: 1`` on
``clrun/warmup_cosine`` and on the weight decay's schedule), and the momentum is linear (train.py:228-229:
``target.schedule: linear``). ``DIFFERENCES`` puts each difference found back (an option at cl-run's default, a
fixed bug) to show the comparison departs where it should.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from tests.parity import clrun_side as C
from tests.parity import ijepa_data as D
from tests.parity import ijepa_weights as W
from tests.parity.make_ijepa import CHECKSUM_STEPS, EPOCHS, STEPS_PER_EPOCH, TENSORS

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ijepa_official.json"
STEPS = STEPS_PER_EPOCH * EPOCHS
DATA_ROOT = C.DATA_ROOT
RTOL = C.RTOL  # 1e-10 relative, as DINO's

# ------------------------------------------------------------------------------------------------ the recipe
# The official config (fixture["official"]["config"]) as recipe lines, spelled as recipes/ijepa_vith14.yaml spells
# them.
RECIPE = """\
seed: 0
data:
  dataset: {{name: parity/views}}
  batch_size: 8                      # data.batch_size 8, one process
  num_workers: 0
  # no mean/std: parity/crop hands out the batch normalized, as ijepa_data.render makes it
views:
  - name: global
    transforms: [{{name: parity/crop, crop: 0}}]
backbone:                            # meta.model_name: the official VisionTransformer, tiny (ijepa_weights.MODEL)
  name: timm/vit_tiny_patch16_224
  in_chans: 1
  img_size: 28                       # data.crop_size 28, mask.patch_size 4
  drop_path_rate: 0.0                # the official encoder has none
  model_args:
    patch_size: 4
    embed_dim: 64
    depth: 2
    num_heads: 2
    class_token: false               # I-JEPA's ViT has none
    global_pool: avg
    fc_norm: false                   # the final norm on every token (vision_transformer.py:422-423)
  sincos_pos_embed: true             # the fixed 2-D sin-cos table (vision_transformer.py:362-366)
projector:
  name: clrun/identity
target:                              # optimization.ema [0.996, 1.0]
  momentum: 0.996
  final_momentum: 1.0
  schedule: linear                   # train.py:228-229: ema[0] + i (ema[1] - ema[0]) / (ipe epochs ipe_scale)
masking:
  generator: {{name: parity/fixed_mask}}   # the official MaskCollator's masks, recorded in the fixture
  hidden: drop                       # allow_overlap false: the context encoder sees the context block only
  head: {{name: clrun/jepa_predictor, embed_dim: 32, depth: 1, num_heads: 2}}  # pred_emb_dim 32, pred_depth 1
loss:
  name: clrun/ijepa                  # F.smooth_l1_loss (beta 1) to the target's layer-normed tokens
optimizer:
  name: torch/AdamW                  # init_opt: torch.optim.AdamW(param_groups), its defaults
  lr: 1.0e-3                         # optimization.lr
  # optimization.weight_decay 0.04, final_weight_decay 0.4 (CosineWDSchedule, stepped before the step)
  weight_decay: {{schedule: cosine, start: 0.04, end: 0.4, offset_steps: 1}}
scheduler:                           # WarmupCosineSchedule, stepped before the step
  name: clrun/warmup_cosine
  warmup_epochs: 1                   # optimization.warmup 1
  warmup_lr: 2.0e-4                  # optimization.start_lr
  min_lr: 1.0e-6                     # optimization.final_lr
  offset_steps: 1                    # stepped before the step: step k has the value at k + 1
init:                                # the official checkpoint: encoder, predictor; the target: target_encoder
  backbone: {{source: {weights}, layout: clrun/ijepa, network: student}}
  token_head: {{source: {weights}, layout: clrun/ijepa, network: student}}
train:
  epochs: 3                          # optimization.epochs 3 (of 10 steps)
  device: cpu
  threads: 1
  precision: fp32                    # the dtype is float64 all the same: torch's default dtype, set here
  log_every: 1
  progress: false
""" + C.RECIPE_END


# -------------------------------------------------------------------------------------------- the fixture side
@lru_cache(maxsize=None)
def load_fixture() -> dict:
    return json.loads(FIXTURE.read_text())


@lru_cache(maxsize=None)
def rendered_batches(data_root: str = str(DATA_ROOT)) -> tuple[tuple[torch.Tensor], ...]:
    """``[step][0]``: the (8, 1, 28, 28) float64 batch of each step (``parity/crop``'s ``crops[step][crop]``)."""
    spec, images = D.make_spec(0), C._images(data_root)
    return tuple((D.render(spec, step, images),) for step in range(D.STEPS))


def official_masks() -> tuple[np.ndarray, np.ndarray]:
    """The official masks: contexts ``(steps, B, L)`` and targets ``(steps, M, B, L)``, bool."""
    return D.unpack(load_fixture()["masks"]["packed"])


# cl-run's names -> the official ones: the encoder keeps timm's names (backbone. -> encoder.), the predictor is
# clrun/jepa_predictor's (token_head.: embed -> predictor_embed, blocks -> predictor_blocks, norm ->
# predictor_norm, out -> predictor_proj, mask_token (E,) -> mask_token (1, 1, E)); the target's backbone is the
# target encoder. The predictor's sin-cos table is no parameter in cl-run (JEPAPredictor computes it).
_PREDICTOR = (("embed.", "predictor_embed."), ("blocks.", "predictor_blocks."), ("norm.", "predictor_norm."),
              ("out.", "predictor_proj."), ("mask_token", "mask_token"))


def official_name(part: str, name: str) -> str:
    """A cl-run part (``backbone``, ``token_head``, ``target``) and parameter name -> ``network.official name``."""
    if part == "token_head":
        for new, old in _PREDICTOR:
            if name.startswith(new):
                return "predictor." + old + name[len(new):]
        raise KeyError(name)
    return ("target_encoder." if part == "target" else "encoder.") + name


# ------------------------------------------------------------------------------------------ the components
class FixedMasks:
    """``parity/fixed_mask``: call k answers with the official masks of step k (one masked view per step)."""

    equal_counts = True  # MultiBlockMask's: masking.hidden: drop needs it

    def __init__(self, contexts: np.ndarray, targets: np.ndarray) -> None:
        self.contexts, self.targets = contexts, targets
        self.calls = 0

    def __call__(self, batch: int, grid: tuple[int, int], device="cpu"):
        from clrun import Masks

        step = self.calls
        assert (batch, tuple(grid)) == (D.BATCH, (D.GRID, D.GRID)), (batch, grid)
        visible = torch.from_numpy(self.contexts[step].copy())
        targets = torch.from_numpy(self.targets[step].transpose(1, 0, 2).copy())  # (B, M, L)
        self.calls += 1
        return Masks(visible, targets, visible_count=int(visible[0].sum()),
                     target_count=int(targets[0, 0].sum())).to(device)


class IJEPARecorder:
    """``parity/recorder`` for I-JEPA: observation only. ``steps[k]``: what step k (from 0) did, in the fixture's
    keys; ``checksums``: the fixture's tensors (official names) before step 0 and after steps 0, 10, 20, 29.

    * a forward hook on the loss: the loss (float64), checksums of the predictions and of the targets as the loss
      computes them (the target's tokens layer-normed, at the target blocks), the masks it got;
    * a post-accumulate-grad hook on every trained parameter: its gradient's norm (the official grad norms per
      network and ``grad_logger``'s statistics are made of these);
    * an optimizer step pre-hook: lr and weight decay of each parameter's group;
    * ``clrun_step_end`` (``train.log_every: 1``, after the update and the EMA): the momentum that update used,
      the checksums.
    """

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.steps: list[dict] = [dict() for _ in range(STEPS)]
        self.checksums: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}  # official name -> its cl-run group's settings at the start
        self.group_names: list[list[str]] = []
        self.dtypes: list[str] = []
        self.run = None
        self._norms: dict[str, float] = {}

    def named(self) -> dict[str, torch.Tensor]:
        """Every parameter of the online network and the target, under the official names."""
        parts = self.run.parts
        modules = (("backbone", parts.network.backbone), ("token_head", parts.network.token_head),
                   ("target", parts.target.backbone))
        return {official_name(part, n): p for part, module in modules for n, p in module.named_parameters()}

    def snapshot(self) -> dict:
        state = self.named()
        out = {}
        for network, names in TENSORS.items():
            # a tensor the model does not have (timm's fc_norm instead of norm: a difference put back) is left out
            out[network] = {n: W.checksums(state[f"{network}.{n}"]) for n in names if f"{network}.{n}" in state}
            trained = [W.checksums(p) for n, p in state.items()
                       if n.startswith(network + ".") and n.split(".", 1)[1] not in W.FIXED_NAMES]
            out[network]["all_parameters"] = [sum(p[0] for p in trained), sum(p[1] for p in trained)]
        return out

    def recorded_steps(self) -> int:
        return sum(1 for s in self.steps if "momentum" in s)

    # ---- cl-run's callback hooks
    def clrun_run_start(self, run) -> None:
        self.run = run
        parts = run.parts  # cl-run's internal bundle (read only; see clrun_side.Recorder)
        named = self.named()
        self.names = {id(p): n for n, p in named.items()}
        self.group_names = [[self.names[id(p)] for p in g["params"]] for g in parts.optimizer.param_groups]
        for g in parts.optimizer.param_groups:
            for p in g["params"]:
                self.groups[self.names[id(p)]] = {k: v for k, v in g.items() if k != "params"}
        self.dtypes = sorted({str(p.dtype) for p in named.values()})
        self.checksums["initial"] = self.snapshot()
        online = {n: p for n, p in named.items() if not n.startswith("target_encoder.")}
        C.hook_up(self, parts, online)

    def loss_hook(self, module, inputs, output) -> None:
        (out,) = inputs
        loss = output["loss"] if isinstance(output, dict) else output
        ((view, prediction),) = [(i, p) for i, p in enumerate(out.token_predictions) if p is not None]
        masks = out.masks[view]
        tokens = out.target_tokens[0].patches  # the one global view's, whole
        target = masks.at_targets(F.layer_norm(tokens, tokens.shape[-1:]))  # as plugins/losses/ijepa.py
        self.steps[self.run.step].update({
            "step": self.run.step, "epoch": self.run.epoch, "loss": float(loss.detach()),
            "loss_dtype": str(loss.dtype), "predictions": W.checksums(prediction),
            "targets": W.abs_checksums(target), "shape": list(prediction.shape),
            "context": masks.visible.cpu().numpy().copy(),
            "target_blocks": masks.targets.cpu().numpy().transpose(1, 0, 2).copy(),
        })

    def gradient_hook(self, name: str, p: torch.Tensor) -> None:
        self._norms[name] = float(torch.linalg.vector_norm(p.grad.detach()))

    def step_pre_hook(self, optimizer, *_) -> None:
        norms, self._norms = self._norms, {}
        self.steps[self.run.step].update({
            "grad_norms": norms,
            "per_parameter": {self.names[id(p)]: (float(g["lr"]), float(g["weight_decay"]))
                              for g in optimizer.param_groups for p in g["params"]},
        })

    def clrun_step_end(self, run, step: int, metrics: dict) -> None:
        k = step - 1  # counted from 1
        self.steps[k]["momentum"] = float(metrics["target_momentum"])
        if k in CHECKSUM_STEPS:
            self.checksums[str(k)] = self.snapshot()
        if self.stop_after is not None and k >= self.stop_after:
            raise C.EnoughSteps(f"parity: stopped after step {k} on purpose")


def grad_stats(norms: dict[str, float]) -> dict[str, float]:
    """The official ``grad_logger(encoder.named_parameters())`` from the gradients' norms (src/utils/logging.py:
    over the encoder's parameters in their order, those with a gradient that are neither a ``.bias`` nor 1-D;
    ``first_layer`` and ``last_layer``: the first and the last ``qkv`` among them)."""
    order = [f"encoder.{n}" for n, shape in W.encoder_shapes() if not n.endswith(".bias") and len(shape) != 1]
    values = [(n, norms[n]) for n in order if n in norms]
    qkv = [v for n, v in values if "qkv" in n]
    plain = [v for _, v in values]
    return {"first_layer": qkv[0], "last_layer": qkv[-1], "min": min(plain), "max": max(plain),
            "avg": sum(plain) / len(plain), "count": len(plain)}


# ------------------------------------------------------------------------------------------------ a run
@dataclass
class Result:
    recorder: IJEPARecorder
    masks: FixedMasks
    recipe: str
    train_seconds: float


def run_clrun(*, overrides: Iterable[str] = (), stop_after: int | None = None, patches: Iterable[Callable[[], ContextManager]] = (),
              data_root: Path = DATA_ROOT, keep: Path | None = None) -> Result:
    """cl-run's 30 I-JEPA steps on the fixture's batches, masks and weights.

    ``overrides``: recipe lines ``key=value``; ``stop_after``: stop after that step (counted from 0; the schedules stay those of 30
    steps); ``patches``: more context managers entered around the run; ``keep``: keep the run folder there and
    show cl-run's output."""
    import clrun

    batches = rendered_batches(str(data_root))
    recorder = IJEPARecorder(stop_after)
    masks = FixedMasks(*official_masks())
    with contextlib.ExitStack() as stack:
        folder = C.run_folder(stack, keep, "clrun-parity-ijepa-")
        weights_file = folder / "jepa-latest.pth.tar"
        torch.save(W.official_checkpoint(W.initial_weights(0)), weights_file)
        text = RECIPE.format(weights=weights_file, run_dir=folder / "runs")
        (folder / "recipe.yaml").write_text(text)
        mask_component = clrun.Component("mask", "parity/fixed_mask", lambda: masks,
                                         "the I-JEPA fixture's official masks, in order")
        stack.enter_context(C.parity_registry(batches, recorder, extra=[mask_component]))
        recipe = clrun.load_recipe(folder / "recipe.yaml", list(overrides))
        seconds = C.train_in_float64(stack, recipe, list(patches), stop_after=stop_after, quiet=keep is None)
    return Result(recorder, masks, text, seconds)


# ------------------------------------------------------------------------------------------------ comparison
GROUPS = ("encoder, decayed", "predictor, decayed", "encoder, not decayed", "predictor, not decayed")


def compare(fixture: dict, recorder: IJEPARecorder) -> dict[str, C.Row]:
    """Per quantity, over the steps ``recorder`` recorded: a ``clrun_side.Row``. Lists (the masks, the group
    members) are compared as 0 (same) or 1 (different)."""
    rows: dict[str, C.Row] = {}

    def add(quantity: str, step, a: float, b: float) -> None:
        rows.setdefault(quantity, C.Row()).add(step, a, b)

    fixed = {f"encoder.{n}" for n in W.FIXED["encoder"]} | {f"predictor.{n}" for n in W.FIXED["predictor"]}
    official_groups = [[n for n in g["params"] if n not in fixed] for g in fixture["param_groups"]]
    decayed = {n for g, meta in zip(official_groups, fixture["param_groups"]) if not meta["WD_exclude"] for n in g}
    # the groups: each officially trained parameter decayed (or not) as there, and nothing else trained by cl-run
    wrong = [n for g in official_groups for n in g
             if n not in recorder.groups or (recorder.groups[n].get("weight_decay", 0) > 0) != (n in decayed)]
    add("param_groups", "start", 0.0, float(bool(wrong)))
    trained = {n for g in official_groups for n in g}
    updated = {n for n, g in recorder.groups.items() if not g.get("frozen")}
    add("trained_parameters", "start", 0.0, float(updated != trained))
    contexts, targets = official_masks()
    for k in range(recorder.recorded_steps()):
        official, ours = fixture["steps"][k], recorder.steps[k]
        for key in ("loss", "momentum"):
            add(key, k, official[key], ours[key])
        for key in ("predictions", "targets"):
            for i, name in enumerate(("sum" if key == "predictions" else "sum_abs", "sumsq")):
                add(f"{key}.{name}", k, official[key][i], ours[key][i])
        add("masks", k, 0.0, float(not (np.array_equal(contexts[k], ours["context"])
                                        and np.array_equal(targets[k], ours["target_blocks"]))))
        norms = ours["grad_norms"]
        for network in ("encoder", "predictor"):
            total = math.sqrt(sum(v * v for n, v in norms.items() if n.startswith(network + ".")))
            add(f"grad_norm_{network}", k, official[f"grad_norm_{network}"], total)
        add("params_with_grad", k, official["params_with_grad"], len(norms))
        for key, value in grad_stats(norms).items():
            add(f"grad_stats.{key}", k, official["grad_stats"][key], value)
        for i, (members, label) in enumerate(zip(official_groups, GROUPS)):
            for key, j in (("lr", 0), ("weight_decay", 1)):
                # the worst of the group's members (cl-run groups the parameters its own way; one it lacks is
                # a departure of trained_parameters)
                worst = max((ours["per_parameter"][n][j] for n in members if n in ours["per_parameter"]),
                            key=lambda v: C.rel(official[f"group_{key}"][i], v))
                add(f"{key}[{label}]", k, official[f"group_{key}"][i], worst)
    for when, official in fixture["checksums"].items():
        if when in recorder.checksums:
            ours = C.flat("", recorder.checksums[when])
            for name, a in C.flat("", official).items():
                if name in ours:
                    add(f"checksum {name}", when, a, ours[name])
                else:  # cl-run's model has no such tensor: a departure
                    add(f"checksum {name}", when, 0.0, 1.0)
    return rows


# ------------------------------------------------------------------------------------- the differences found
@contextlib.contextmanager
def mask_tokens_with_the_biases() -> Iterator[None]:
    """The bug fixed in core/training/optim/param_groups.py (``DECAYED_TOKENS``): the predictor's 1-D mask token
    in the no-decay group with the biases and norms (the official ``(1, 1, E)`` token is decayed)."""
    from unittest import mock

    from clrun.training.optim import param_groups

    with mock.patch.object(param_groups, "DECAYED_TOKENS", ()):
        yield


@dataclass(frozen=True)
class Difference:
    """A difference the comparison found, put back: ``overrides`` (an option set back to cl-run's default) and
    ``patches`` (a fixed bug put back); ``departs``:
    for each quantity named, the step it must first depart at (``"start"``: the groups; None: not before the run
    stops, after the last step named)."""

    what: str
    departs: dict
    overrides: tuple[str, ...] = ()
    patches: tuple[Callable[[], ContextManager], ...] = ()

    @property
    def stop_after(self) -> int:
        return max(s for s in self.departs.values() if isinstance(s, int))

    def keywords(self) -> dict:
        """``run_clrun``'s keywords for this difference."""
        return {"overrides": self.overrides, "patches": self.patches}


DIFFERENCES: dict[str, Difference] = {
    "final_norm_after_pooling": Difference(
        "timm's default for an average-pooled ViT (fc_norm: the final norm after the pooling, none on the tokens) "
        "instead of the official final norm on every token; the file's norm then fits no tensor (init.backbone."
        "strict=false: without it cl-run refuses to load the checkpoint)",
        {"trained_parameters": "start", "loss": 0, "targets.sum_abs": 0, "predictions.sum": 0},
        overrides=("backbone.model_args.fc_norm=null", "init.backbone.strict=false")),
    "lr_one_step_behind": Difference(
        "clrun/warmup_cosine's default offset_steps 0: step k has the schedule's lr at k (the official scheduler is stepped before "
        "the step: position k + 1); its first lr is warmup_lr (2e-4), the official start_lr + (lr - start_lr) / 10",
        {"lr[encoder, decayed]": 0, "loss": 1, "weight_decay[encoder, decayed]": None, "momentum": None},
        overrides=("scheduler.offset_steps=0",)),
    "weight_decay_one_step_behind": Difference(
        "the weight decay's cosine without offset_steps (step k at position k; the official CosineWDSchedule is "
        "stepped first: position k + 1): 0.04 at step 0 instead of 0.04099",
        {"weight_decay[encoder, decayed]": 0, "loss": 1, "lr[encoder, decayed]": None},
        overrides=("optimizer.weight_decay={schedule: cosine, start: 0.04, end: 0.4}",)),
    "cosine_target_momentum": Difference(
        "cl-run's cosine momentum (0.996 -> 1) instead of the official linear one: equal at step 0, apart from "
        "step 1; the target's tokens from the step after",
        {"momentum": 1, "targets.sum_abs": 2, "loss": 2, "predictions.sum": None},
        overrides=("target.schedule=cosine",)),
    "mask_token_not_decayed": Difference(
        "the predictor's mask token gets no weight decay (cl-run's 1-D token with the biases, as before "
        "DECAYED_TOKENS; the official (1, 1, E) one is decayed by init_opt)",
        {"param_groups": "start", "weight_decay[predictor, decayed]": 0, "loss": 1},
        patches=(mask_tokens_with_the_biases,)),
    "pos_embed_trained": Difference(
        "the encoder's position embeddings trained (timm's ViT parameter, cl-run's default) instead of the fixed "
        "sin-cos table",
        {"trained_parameters": "start", "loss": 1},
        overrides=("backbone.sincos_pos_embed=false",)),
}


# ------------------------------------------------------------------------------------- the masks' generator
# The official config's mask section as clrun/multiblock_mask's arguments (min_keep 4: make_ijepa.config).
MULTIBLOCK = dict(targets=D.TARGETS, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0),
                  min_keep=4)


@contextlib.contextmanager
def official_block_positions() -> Iterator[None]:
    """``clrun/multiblock_mask`` placing its blocks where the official ``_sample_block_mask`` can: a corner in
    ``torch.randint(0, H - h, (1,))`` (src/masks/multiblock.py:89-90; the high end is exclusive, so a block never
    reaches the last row or column, facebookresearch/ijepa#40), where cl-run's offsets take every position
    ``0 .. H - h``. Emulated by the generators module's ``_offsets`` drawing in ``0 .. room - 1`` (0 when the
    block fills all but one row: the official ``randint(0, 1)``)."""
    from unittest import mock

    from clrun.plugins.masks import generators

    offsets = generators._offsets
    with mock.patch.object(generators, "_offsets", lambda room: offsets((room - 1).clamp(min=0))):
        yield


def clrun_probe(batches: int, seed: int = 1) -> dict:
    """``make_ijepa.probe``'s counts for cl-run's ``clrun/multiblock_mask`` with the official config (float32,
    after ``torch.manual_seed(seed)``; torch's generator is left as it was)."""
    from clrun.plugins.masks.generators import MultiBlockMask

    generator = MultiBlockMask(**MULTIBLOCK)
    context = np.zeros(D.PATCHES, dtype=np.int64)
    target = np.zeros(D.PATCHES, dtype=np.int64)
    context_counts: dict[int, int] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(batches):
            masks = generator(D.BATCH, (D.GRID, D.GRID))
            context += masks.visible.sum(dim=0).numpy()
            target += masks.targets.sum(dim=(0, 1)).numpy()
            context_counts[masks.visible_count] = context_counts.get(masks.visible_count, 0) + 1
    return {"context_per_patch": context.tolist(), "target_per_patch": target.tolist(),
            "context_counts": {str(k): v for k, v in sorted(context_counts.items())}}


def last_row_and_column(per_patch: list[int]) -> int:
    """How often the patches of the grid's last row and last column were chosen, together."""
    grid = np.asarray(per_patch).reshape(D.GRID, D.GRID)
    return int(grid[-1].sum() + grid[:-1, -1].sum())
