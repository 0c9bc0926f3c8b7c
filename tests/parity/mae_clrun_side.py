"""cl-run's side of the MAE parity tests: cl-run's own training loop on the MAE fixture's batches, masks and weights.

``run_clrun()`` runs ``clrun.train`` (unmodified) on ``RECIPE``, the official flags of ``fixtures/mae_official.json``
(``make_mae.py``) written as recipe lines, on the very batches, masking noise and initial weights the fixture was
made with, in float64, and records per step what the fixture records; ``compare`` puts the two side by side.
The tests are ``test_mae_parity.py``; ``harness_mae.py`` is a command line over this module.

The machinery is DINO's (``clrun_side.py``): the ``parity/views`` stream hands out (step, image) codes in the
fixture's order, ``parity/crop`` (crop 0) turns them into ``mae_data.render``'s float64 batch of that step,
``parity/recorder`` (here a ``Recorder`` of this module) observes, all in a registry of the run's own
(``clrun_side.parity_registry``), with ``torch.set_default_dtype(torch.float64)`` around ``clrun.train``. What
MAE adds:

* the masking noise. cl-run's ``clrun/random_mask`` (``RandomMask``) draws ``torch.rand(B, L)`` and keeps the
  ``int(L (1 - ratio))`` patches of smallest noise; ``parity/noise_mask`` (a ``mask`` component) is that very
  ``RandomMask``, called with its module's ``torch.rand`` answering the step's ``mae_data.mask_noise`` (the
  official ``random_masking``'s ``torch.rand(N, L)`` got the same array). So cl-run's own masking code runs:
  its keep count and its choice of patches are compared, not assumed;
* the initial weights: ``mae_weights.initial_weights(0)`` (bit for bit the official model's) saved as the
  official checkpoint (``{"model": state}``, official names and shapes) and loaded through the recipe's
  ``init:`` with ``layout: clrun/mae`` (``clrun.plugins.weights.official.mae``): cl-run's own mapping of the
  official encoder into timm's ViT and of the decoder into ``clrun/mae_decoder``;
* the prediction of every patch (the fixture's ``pred`` checksum covers all 49, the visible ones too): a
  forward hook on the decoder's output layer (``token_head.out``), whose output is every patch's prediction
  before ``MAEDecoder`` selects the hidden ones.

The two official behaviours that cl-run lacked when this comparison was first run are cl-run's own now: the
decoder's mask token is weight-decayed (official: a (1, 1, E) tensor, so ``add_weight_decay`` decays it;
cl-run's 1-D one was exempt with the biases, until ``param_groups.DECAYED_TOKENS``), and the encoder's position
embeddings are a fixed sin-cos table (official ``requires_grad=False``; the backbone option
``sincos_pos_embed: true``, as recipes/mae_vitb16.yaml has it). ``DIFFERENCES`` puts each back (the bug with a
patch, the option with a recipe line) for the tests that show the comparison catches them;
``official_keep_order`` puts the encoder's kept patches in the official order (rounding only). README.md and
docs/guides/parity.md have the measurements.
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

from tests.parity import clrun_side as C
from tests.parity import mae_data as D
from tests.parity import mae_weights as W
from tests.parity.make_mae import CHECKSUM_STEPS, EPOCHS, STEPS_PER_EPOCH, TENSORS
from tests.parity.official_code import Proxy

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mae_official.json"
STEPS = STEPS_PER_EPOCH * EPOCHS
DATA_ROOT = C.DATA_ROOT
RTOL = C.RTOL  # 1e-10 relative, as DINO's

# ------------------------------------------------------------------------------------------------ the recipe
# The official flags (fixture["official"]["flags"]) as recipe lines, spelled as recipes/mae_vitb16.yaml spells
# them.
RECIPE = """\
seed: 0
data:
  dataset: {{name: parity/views}}
  batch_size: 8                      # --batch_size 8 --accum_iter 1, one process
  num_workers: 0
  # no mean/std: parity/crop hands out the batch normalized, as mae_data.render makes it
views:
  - name: global
    transforms: [{{name: parity/crop, crop: 0}}]
backbone:                            # MaskedAutoencoderViT's encoder, tiny (mae_weights.MODEL)
  name: timm/vit_tiny_patch16_224
  in_chans: 1
  img_size: 28                       # --input_size 28
  drop_path_rate: 0.0                # the official encoder has none
  model_args: {{patch_size: 4, embed_dim: 64, depth: 2, num_heads: 2}}
  sincos_pos_embed: true             # the official encoder's fixed 2-D sin-cos table (requires_grad=False)
projector:
  name: clrun/identity
masking:
  generator: {{name: parity/noise_mask, ratio: 0.75}}   # clrun/random_mask on the recorded noise; --mask_ratio 0.75
  hidden: drop
  head: {{name: clrun/mae_decoder, embed_dim: 32, depth: 1, num_heads: 2}}
loss:
  name: clrun/mae
  norm_pix_loss: true                # --norm_pix_loss
optimizer:
  name: torch/AdamW                  # torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, 0.95))
  lr: 1.0e-3                         # --blr 0.032 x 8 / 256
  betas: [0.9, 0.95]
  weight_decay: 0.05                 # --weight_decay 0.05
scheduler:                           # util/lr_sched.py: --warmup_epochs 1 --min_lr 1e-5, per iteration
  name: clrun/warmup_cosine
  warmup_epochs: 1
  min_lr: 1.0e-5
init:                                # the official checkpoint layout: encoder and decoder
  backbone: {{source: {weights}, layout: clrun/mae}}
  token_head: {{source: {weights}, layout: clrun/mae}}
train:
  epochs: 3
  device: cpu
  threads: 1
  precision: fp32                    # the dtype is float64 all the same: torch's default dtype, set here
  log_every: 1
  progress: false
""" + C.RECIPE_END

# -------------------------------------------------------------------------------------------- the fixture side
def load_fixture() -> dict:
    return json.loads(FIXTURE.read_text())


@lru_cache(maxsize=None)
def rendered_batches(data_root: str = str(DATA_ROOT)) -> tuple[tuple[torch.Tensor], ...]:
    """``[step][0]``: the (8, 1, 28, 28) float64 batch of each step (``parity/crop``'s ``crops[step][crop]``)."""
    spec, images = D.make_spec(0), C._images(data_root)
    return tuple((D.render(spec, step, images),) for step in range(D.STEPS))


@lru_cache(maxsize=None)
def noise() -> np.ndarray:
    return D.mask_noise(0)


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The official model's initial state dict (``mae_weights.initial_weights``), the official shapes."""
    return W.initial_weights(seed)


# The official names and cl-run's (clrun.plugins.weights.official.mae + heads.token_transformer): the encoder
# keeps timm's names under backbone., the decoder is clrun/mae_decoder's under token_head (decoder_embed ->
# embed, decoder_blocks -> blocks, decoder_norm -> norm, decoder_pred -> out); decoder_pos_embed is no parameter
# in cl-run (MAEDecoder computes the table: Recorder.decoder_pos_embed).
_DECODER = (("decoder_embed.", "embed."), ("decoder_blocks.", "blocks."), ("decoder_norm.", "norm."),
            ("decoder_pred.", "out."), ("mask_token", "mask_token"))


def official_name(clrun: str) -> str:
    """A cl-run network name (``backbone.``, ``token_head.``) -> the official model's."""
    part, _, rest = clrun.partition(".")
    if part == "token_head":
        for old, new in _DECODER:
            if rest.startswith(new):
                return old + rest[len(new):]
    assert part == "backbone", clrun
    return rest


# ------------------------------------------------------------------------------------------ the components
class NoiseMask:
    """``parity/noise_mask``: cl-run's ``clrun/random_mask`` (``RandomMask(ratio)``) drawing the fixture's noise.

    Call k (one per step) answers the generator module's ``torch.rand(B, L)`` with ``mae_data.mask_noise(0)[k]``
    (float64), as ``make_mae.py`` answered the official ``random_masking``'s; everything else is
    ``RandomMask.__call__`` as it is."""

    equal_counts = True  # RandomMask's: masking.hidden: drop needs it
    official_order = False  # official_keep_order(): the kept patches in the official order

    def __init__(self, ratio: float = 0.75) -> None:
        from clrun.plugins.masks.generators import RandomMask

        self.inner = RandomMask(ratio)
        self.calls = 0

    def __call__(self, batch: int, grid: tuple[int, int], device="cpu"):
        from unittest import mock

        from clrun.plugins.masks import generators

        step = self.calls
        recorded = torch.from_numpy(noise()[step].copy())

        def rand(*size, device=None, **kwargs):
            assert not kwargs and tuple(size) == tuple(recorded.shape), (size, kwargs)
            return recorded.to(device)

        with mock.patch.object(generators, "torch", Proxy(torch, rand=rand)):
            masks = self.inner(batch, grid, device)
        if self.official_order:
            # Masks.visible_index is a cached_property: its value put in the instance's __dict__ beforehand
            order = D.keep_order(recorded, self.inner.ratio).to(masks.visible.device)
            assert torch.equal(order.sort(dim=1).values, masks.visible_index)
            masks.__dict__["visible_index"] = order
        self.calls += 1
        return masks


class Recorder:
    """``parity/recorder`` for MAE: observation only. ``steps[k]``: what step k (from 0) did, in the fixture's
    keys; ``checksums``: the fixture's tensors (official names) before step 0 and after steps 0, 10, 20, 29.

    * a forward hook on the loss: the loss (float64), the masks of the view (hidden count per image, the visible
      patches);
    * a forward hook on the decoder's output layer: the prediction of every patch (``pred``);
    * a post-accumulate-grad hook on every parameter: the gradient norms (``grad_norm``: the 2-norm over the
      parameters the official model trains, as ``get_grad_norm_`` returns it);
    * an optimizer step pre-hook: lr and weight decay of the group of each parameter;
    * ``clrun_step_end`` (``train.log_every: 1``, after the update): the checksums.
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
        """The online network's parameters under the official names."""
        network = self.run.parts.network
        return {official_name(f"{part}.{n}"): p for part in ("backbone", "token_head")
                for n, p in getattr(network, part).named_parameters()}

    def decoder_pos_embed(self) -> torch.Tensor:
        """The table ``MAEDecoder`` adds (``position_embeddings`` of the grid), with the class token's zero row
        prepended, as the official (1, 50, 32) parameter holds it."""
        from clrun.plugins.heads.token_heads import position_embeddings

        like = torch.zeros(1, W.DEC_EMBED, dtype=torch.float64)
        table = position_embeddings((W.GRID, W.GRID), like)
        return torch.cat([torch.zeros(1, W.DEC_EMBED, dtype=table.dtype), table]).unsqueeze(0)

    def snapshot(self) -> dict:
        state = {**self.named(), "decoder_pos_embed": self.decoder_pos_embed()}
        out = {n: W.checksums(state[n]) for n in TENSORS}
        pairs = [W.checksums(p) for p in state.values()]
        out["all_parameters"] = [sum(p[0] for p in pairs), sum(p[1] for p in pairs)]
        return out

    def recorded_steps(self) -> int:
        return sum(1 for s in self.steps if "lr" in s and "loss" in s)

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
        self.dtypes = sorted({str(p.dtype) for p in parts.network.parameters()})
        self.checksums["initial"] = self.snapshot()
        C.hook_up(self, parts, named)
        parts.network.token_head.out.register_forward_hook(self.prediction_hook)

    def loss_hook(self, module, inputs, output) -> None:
        (out,) = inputs
        loss = output["loss"] if isinstance(output, dict) else output
        (masks,) = out.masks
        self.steps[self.run.step].update({
            "step": self.run.step, "epoch": self.run.epoch, "loss": float(loss.detach()),
            "loss_dtype": str(loss.dtype),
            "masked_per_image": [int(m) for m in masks.hidden.sum(1)],
            "visible": masks.visible.detach().clone(),
            "visible_index": masks.visible_index.detach().clone(),
        })

    def prediction_hook(self, module, inputs, output) -> None:
        # (B, L, P): every patch's prediction, raster order (MAEDecoder then picks the hidden ones)
        self.steps[self.run.step]["pred"] = W.checksums(output.detach())

    def gradient_hook(self, name: str, p: torch.Tensor) -> None:
        self._norms[name] = float(torch.linalg.vector_norm(p.grad.detach()))

    def step_pre_hook(self, optimizer, *_) -> None:
        norms, self._norms = self._norms, {}
        groups = {}
        for g in optimizer.param_groups:
            for p in g["params"]:
                groups[self.names[id(p)]] = (float(g["lr"]), float(g["weight_decay"]))
        trained = [n for n in norms if n not in W.FIXED]  # the official model trains no position embedding
        self.steps[self.run.step].update({
            "grad_norm": math.sqrt(sum(norms[n] ** 2 for n in trained)),
            "grad_norm_all": math.sqrt(sum(v * v for v in norms.values())),
            "params_with_grad": sorted(norms),
            "lr": {n: v[0] for n, v in groups.items()},
            "weight_decay": {n: v[1] for n, v in groups.items()},
        })

    def clrun_step_end(self, run, step: int, metrics: dict) -> None:
        k = step - 1  # counted from 1
        if k in CHECKSUM_STEPS:
            self.checksums[str(k)] = self.snapshot()
        if self.stop_after is not None and k >= self.stop_after:
            raise C.EnoughSteps(f"parity: stopped after step {k} on purpose")


# ------------------------------------------------------------------------------------------------ a run
@dataclass
class Result:
    recorder: Recorder
    masks: NoiseMask
    recipe: str
    train_seconds: float


def run_clrun(*, overrides: Iterable[str] = (), stop_after: int | None = None,
              patches: Iterable[Callable[[], ContextManager]] = (),
              data_root: Path = DATA_ROOT, keep: Path | None = None) -> Result:
    """cl-run's 30 MAE steps on the fixture's batches, noise and weights.

    ``overrides``: recipe lines ``key=value``; ``stop_after``: stop after that step (counted from 0; the
    schedules stay those of 30 steps); ``patches``: context managers entered around the run; ``keep``: keep
    the run folder there and show cl-run's output."""
    import clrun

    batches = rendered_batches(str(data_root))
    recorder, masks = Recorder(stop_after), None

    def make_mask(ratio: float = 0.75) -> NoiseMask:
        nonlocal masks
        masks = NoiseMask(ratio)
        return masks

    with contextlib.ExitStack() as stack:
        folder = C.run_folder(stack, keep, "clrun-parity-mae-")
        weights_file = folder / "checkpoint-official.pth"
        torch.save({"model": official_state(0)}, weights_file)  # util/misc.py's checkpoint, "model" only
        text = RECIPE.format(weights=weights_file, run_dir=folder / "runs")
        (folder / "recipe.yaml").write_text(text)
        mask_component = clrun.Component("mask", "parity/noise_mask", make_mask,
                                         "clrun/random_mask on the MAE fixture's recorded noise")
        stack.enter_context(C.parity_registry(batches, recorder, extra=[mask_component]))
        recipe = clrun.load_recipe(folder / "recipe.yaml", list(overrides))
        seconds = C.train_in_float64(stack, recipe, patches, stop_after=stop_after, quiet=keep is None)
    return Result(recorder, masks, text, seconds)


# ------------------------------------------------------------------------------------------------ comparison
def compare(fixture: dict, recorder: Recorder) -> dict[str, C.Row]:
    """Per quantity, over the steps ``recorder`` recorded: a ``clrun_side.Row``. Lists (the masks, the group
    members) are compared as 0 (same) or 1 (different)."""
    rows: dict[str, C.Row] = {}

    def add(quantity: str, step, a: float, b: float) -> None:
        rows.setdefault(quantity, C.Row()).add(step, a, b)

    official_groups = fixture["param_groups"]  # 0: not decayed, 1: decayed
    labels = ("not decayed", "decayed")
    # the groups: each officially trained parameter decayed as there, and nothing else trained by cl-run
    trained = {n for g in official_groups for n in g["params"]}
    wrong = [n for g in official_groups for n in g["params"]
             if recorder.groups.get(n, {}).get("weight_decay") != g["weight_decay"]]
    add("param_groups", "start", 0.0, float(bool(wrong)))
    updated = {n for n, g in recorder.groups.items() if not g.get("frozen")}
    add("trained_parameters", "start", 0.0, float(updated != trained))
    for k in range(recorder.recorded_steps()):
        official, ours = fixture["steps"][k], recorder.steps[k]
        add("loss", k, official["loss"], ours["loss"])
        add("grad_norm", k, official["grad_norm"], ours["grad_norm"])
        for i, name in enumerate(("sum", "sumsq")):
            add(f"pred.{name}", k, official["pred"][i], ours["pred"][i])
        add("masked_per_image", k, 0.0, float(official["masked_per_image"] != ours["masked_per_image"]))
        keep = torch.tensor(fixture["masks"]["ids_keep"][k])
        add("visible_patches", k, 0.0, float(not torch.equal(keep.sort(dim=1).values,
                                                               ours["visible_index"].sort(dim=1).values)))
        for g, label in zip(official_groups, labels):
            i = labels.index(label)
            for key in ("lr", "weight_decay"):
                # the worst of the group's members (cl-run may split an official group)
                worst = max((ours[key][n] for n in g["params"]), key=lambda v: C.rel(official[key][i], v))
                add(f"{key}[{label}]", k, official[key][i], worst)
    for when, official in fixture["checksums"].items():
        if when in recorder.checksums:
            ours = C.flat("", recorder.checksums[when])
            for name, a in C.flat("", official).items():
                add(f"checksum {name}", when, a, ours[name])
    return rows


# ------------------------------------------------------------------------------------- the differences found
@contextlib.contextmanager
def official_keep_order() -> Iterator[None]:
    """The encoder's kept patches in the official order (ascending noise, ``ids_shuffle[:, :len_keep]``) instead
    of cl-run's raster order (``Masks.visible_index``): the backbone gathers and the decoder scatters back by
    that index, so only the order of the encoder's sequence changes."""
    from unittest import mock

    with mock.patch.object(NoiseMask, "official_order", True):
        yield


# The differences found, as the run puts them back (clrun_side.Difference).
@contextlib.contextmanager
def mask_tokens_with_the_biases() -> Iterator[None]:
    """The bug fixed in core/training/optim/param_groups.py (``DECAYED_TOKENS``): the decoder's 1-D mask token
    in the no-decay group with the biases and norms, as cl-run grouped it until checkpoint format 2."""
    from unittest import mock

    from clrun.training.optim import param_groups

    with mock.patch.object(param_groups, "DECAYED_TOKENS", ()):
        yield


DIFFERENCES: dict[str, C.Difference] = {
    "mask_token_not_decayed": C.Difference(
        "the decoder's mask token gets no weight decay (cl-run's 1-D (E,) token with the biases; the official "
        "(1, 1, E) one is decayed): the bug fixed in clrun.training.optim.param_groups",
        patches=(mask_tokens_with_the_biases,)),
    "pos_embed_trained": C.Difference(
        "the encoder's position embeddings trained (timm's ViT parameter, cl-run's default) instead of fixed",
        overrides=("backbone.sincos_pos_embed=false",)),
}
