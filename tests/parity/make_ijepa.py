"""A reference trajectory of the official I-JEPA training step (facebookresearch/ijepa), tiny, on the CPU, float64.

It runs the official ``src/train.py``'s ``main(args)`` itself, unmodified, for 3 epochs of 10 steps: its set-up
(``init_model``, ``copy.deepcopy`` for the target encoder, ``MaskCollator``, ``init_opt`` (AdamW over four
groups, ``WarmupCosineSchedule``, ``CosineWDSchedule``), DDP, the momentum generator with ``ipe_scale``) and its
epoch loop with the inner ``train_step`` closure (train.py:290-338: schedulers stepped first, the target's
layer-normed tokens at the target blocks, the context encoder and the predictor, ``F.smooth_l1_loss``, AdamW,
``grad_logger``, the EMA with ``next(momentum_scheduler)``). Nothing of the step is copied: the closure runs as
train.py writes it. The settings are an official config (``config``: the keys of configs/in1k_vith14_ep300.yaml,
passed as ``main``'s ``args``), the model made tiny (``ijepa_weights.MODEL``). The data are ``ijepa_data.py``'s
views (Fashion-MNIST, batch 8, one 28 px crop per image) with the masks of the official ``MaskCollator`` (the one
``main`` builds, called on each batch as its DataLoader would); the initial weights are ``ijepa_weights.
initial_weights(0)``, drawn by NumPy, loaded into the official models. It records, per step, what a
reimplementation must reproduce, in ``fixtures/ijepa_official.json``; and, apart from the run, where a fresh
``MaskCollator`` with the same settings puts its blocks over 2000 images (``probe``), for the comparison of
cl-run's ``clrun/multiblock_mask`` with it.

Usage (DIR: a tree of facebookresearch/ijepa at the commit of README.md, with that commit in ``DIR/.commit`` when
it is not a git checkout; see README.md for the export)::

    .venv/bin/python tests/parity/make_ijepa.py --official DIR

What is patched to run the official ``main`` on today's torch, on a CPU, without its launcher and ImageNet (no
official file is edited; each patch is a module attribute of ``src.train`` or ``src.models.vision_transformer``
set below, in ``run``):

* ``init_distributed`` (NCCL under SLURM) returns the world of an initialized process group: a one-process gloo
  group (``file://`` store) is made first, which the three ``DistributedDataParallel`` wrappers need (no
  ``device_ids``: CPU). ``AllReduce`` is the identity in a world of one;
* the model: ``meta.model_name`` is ``vit_parity``, a constructor added to ``src.models.vision_transformer`` that
  builds ``VisionTransformer`` as ``vit_tiny`` does (MLP ratio 4, qkv bias, LayerNorm eps 1e-6) with width 64,
  depth 2, 2 heads, one input channel (``in_chans``, which ``init_model`` does not pass); ``init_model`` runs as it
  is (and builds the predictor with ``vit_predictor``), then ``ijepa_weights.initial_weights(0)`` is loaded into
  both models (``load_state_dict``, strict; the fixed sin-cos tables are checked equal to the models' own);
* ``torch.set_default_dtype(torch.float64)`` before ``main``: everything runs in float64 (the fixed tables are
  float32-rounded by the official ``.float()`` all the same). The ``MaskCollator`` draws under float32, the
  default of an official data-loader worker (its ``torch.rand(1, generator=g)`` draws a float32 there);
* the data: ``make_imagenet1k`` returns a loader of 10 batches per epoch instead of ImageFolder + transforms +
  ``DistributedSampler`` + ``DataLoader``: batch ``s`` is ``ijepa_data.render``'s, collated with its masks by the
  official ``MaskCollator`` that ``main`` made (``collator(batch)`` for the 30 batches in order, as the
  DataLoader's ``collate_fn``: its step counter seeds the block sizes, 0 to 29), drawn once beforehand after
  ``torch.manual_seed(MASK_SEED)`` (the block positions come from torch's global generator: in an official run,
  each worker's);
* ``torch.cuda.amp.autocast(enabled=False)`` (``use_bfloat16: false``) and the CSV logger run as they are, into a
  temporary folder (which also gets the ``params-ijepa.yaml`` dump and the checkpoint ``main`` saves after each
  epoch); the root logger is set to WARNING unless ``--verbose`` (``init_model`` logs the whole model). Run as a
  script, ``CUDA_VISIBLE_DEVICES`` is emptied before torch is imported, so ``main`` picks the CPU and
  ``gpu_timer`` times nothing on any machine.

Observation only (no change to what runs): wrappers, set as ``src.train``'s globals, around ``init_opt`` (the
optimizer, for a step pre-hook: lr, weight decay and the gradients of each group before AdamW steps),
``copy.deepcopy`` (the target encoder it makes), ``gpu_timer`` (what ``train_step`` returns: the loss, the new lr
and weight decay, ``grad_logger``'s statistics), ``next`` (the momentum ``next(momentum_scheduler)`` gives: the
closure looks ``next`` up in the module's globals before the builtins) and ``F`` (``torch.nn.functional`` whose
``smooth_l1_loss`` records checksums of its two arguments, the predictions and the targets); the loader records
the state after each step.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before torch is imported: main() must pick the CPU
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import builtins  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.parity import ijepa_data as D  # noqa: E402
from tests.parity import ijepa_weights as W  # noqa: E402
from tests.parity import official_code as O  # noqa: E402
from tests.parity import views as V  # noqa: E402
from tests.parity.make_dino import one_process_group  # noqa: E402

STEPS_PER_EPOCH = 10
EPOCHS = 3
STEPS = STEPS_PER_EPOCH * EPOCHS
CHECKSUM_STEPS = (0, 10, 20, 29)
VIEW_SEED = 0
MASK_SEED = 0
WEIGHT_SEED = 0
MODEL_NAME = "vit_parity"
# Tensors whose [sum, sum of squares] are recorded initially and after CHECKSUM_STEPS (official names).
TENSORS = {
    "encoder": ("pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "blocks.0.attn.qkv.weight",
                "blocks.1.mlp.fc2.weight", "norm.weight", "norm.bias"),
    "predictor": ("mask_token", "predictor_embed.weight", "predictor_blocks.0.attn.qkv.weight",
                  "predictor_blocks.0.mlp.fc2.weight", "predictor_norm.weight", "predictor_proj.weight",
                  "predictor_proj.bias"),
    "target_encoder": ("pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight",
                       "norm.weight", "norm.bias"),
}
OFFICIAL_FILES = ("src/train.py", "src/helper.py", "src/models/vision_transformer.py", "src/masks/multiblock.py",
                  "src/masks/utils.py", "src/utils/schedulers.py", "src/utils/distributed.py", "src/utils/logging.py",
                  "src/utils/tensors.py", "src/datasets/imagenet1k.py", "src/transforms.py")
GROUPS = ("encoder, decayed", "predictor, decayed", "encoder, not decayed", "predictor, not decayed")  # init_opt's


def config(folder: str) -> dict:
    """``main``'s ``args``: configs/in1k_vith14_ep300.yaml's keys and values, except the model (tiny), the data (28 px
    Fashion-MNIST, batch 8, no workers), ``min_keep`` (4: on a 7 x 7 grid a target block has 6 to 9 patches, and
    a block is valid only with more than ``min_keep``, so 10 would never end) and the epochs (3 of 10 steps,
    warm-up 1: the 30 steps cross the lr warm-up's end at step 9)."""
    return {
        "meta": {"use_bfloat16": False, "model_name": MODEL_NAME, "load_checkpoint": False, "read_checkpoint": None,
                 "copy_data": False, "pred_depth": W.PRED_DEPTH, "pred_emb_dim": W.PRED_EMBED},
        "data": {"use_gaussian_blur": False, "use_horizontal_flip": False, "use_color_distortion": False,
                 "color_jitter_strength": 0.0, "batch_size": D.BATCH, "pin_mem": False, "num_workers": 0,
                 "root_path": "(ijepa_data.py: Fashion-MNIST)", "image_folder": "(none)", "crop_size": W.IMG,
                 "crop_scale": list(D.SCALE)},
        "mask": {"allow_overlap": False, "patch_size": W.PATCH, "num_enc_masks": D.CONTEXTS, "min_keep": 4,
                 "enc_mask_scale": [0.85, 1.0], "num_pred_masks": D.TARGETS, "pred_mask_scale": [0.15, 0.2],
                 "aspect_ratio": [0.75, 1.5]},
        "optimization": {"ema": [0.996, 1.0], "ipe_scale": 1.0, "weight_decay": 0.04, "final_weight_decay": 0.4,
                         "epochs": EPOCHS, "warmup": 1, "start_lr": 0.0002, "lr": 0.001, "final_lr": 1.0e-6},
        "logging": {"folder": folder, "write_tag": "jepa"},
    }


def pair(t: torch.Tensor) -> list[float]:
    return W.checksums(t)


# ------------------------------------------------------------------------------------------------ the data
class Loader:
    """The official DataLoader of one epoch (``set_epoch`` by its sampler): ``(udata, masks_enc, masks_pred)`` per
    step, as ``MaskCollator`` returns it; ``before_step(it)`` as a step's batch is handed out, ``after_step(it)``
    once its body is done (the next batch is asked for, or the epoch ends)."""

    def __init__(self, items: list[tuple], before_step, after_step):
        self.items, self.before_step, self.after_step = items, before_step, after_step
        self.epoch = 0

    def __len__(self) -> int:
        return STEPS_PER_EPOCH

    def __iter__(self):
        for i in range(STEPS_PER_EPOCH):
            it = self.epoch * STEPS_PER_EPOCH + i
            self.before_step(it)
            yield self.items[it]
            self.after_step(it)


class Sampler:
    """``unsupervised_sampler``: ``set_epoch`` tells the loader which epoch it hands out."""

    def __init__(self, loader: Loader):
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.epoch = epoch


def collate_all(collator, batches: list[torch.Tensor]) -> tuple[list[tuple], int]:
    """The official ``collator`` on each step's batch of ``(image, label)`` items, in order (its step counter
    0..29), after ``torch.manual_seed(MASK_SEED)``, under float32 as in a data-loader worker; torch's global
    generator and default dtype are left as they were. Returns the collated steps and how many times the
    collator had to relax a context block ("Valid mask not found", logged)."""
    relaxed = []

    class Count(logging.Handler):
        def emit(self, record):
            if "Valid mask not found" in record.getMessage():
                relaxed.append(record.getMessage())

    handler, root = Count(), logging.getLogger()
    root.addHandler(handler)
    dtype = torch.get_default_dtype()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MASK_SEED)
            torch.set_default_dtype(torch.float32)
            items = [collator([(image, 0) for image in batch]) for batch in batches]
    finally:
        torch.set_default_dtype(dtype)
        root.removeHandler(handler)
    for udata, masks_enc, masks_pred in items:
        for index in [*masks_enc, *masks_pred]:
            assert torch.equal(index, index.sort(dim=1).values), "the official indices are ascending"
    return items, len(relaxed)


PROBE_SEED, PROBE_BATCHES = 1, 250  # the generator probe: 2000 images


def mask_collator(train, mask: dict):
    """A ``MaskCollator`` as ``main`` makes it (train.py:172-181) from a config's ``mask`` section."""
    return train.MBMaskCollator(input_size=W.IMG, patch_size=mask["patch_size"],
                                pred_mask_scale=mask["pred_mask_scale"], enc_mask_scale=mask["enc_mask_scale"],
                                aspect_ratio=mask["aspect_ratio"], nenc=mask["num_enc_masks"],
                                npred=mask["num_pred_masks"], allow_overlap=mask["allow_overlap"],
                                min_keep=mask["min_keep"])


def probe(collator, batches: int = PROBE_BATCHES, seed: int = PROBE_SEED) -> dict:
    """How the official collator places its blocks, over ``batches`` batches of 8 (float32, after
    ``torch.manual_seed(seed)``; torch's generator is left as it was): per patch (raster order), in how many
    images the context holds it and in how many (image, target block) pairs a target does; how many patches the
    contexts and the targets hold (per batch: ``{count: batches}``)."""
    context = np.zeros(D.PATCHES, dtype=np.int64)
    target = np.zeros(D.PATCHES, dtype=np.int64)
    context_counts: dict[int, int] = {}
    target_counts: dict[int, int] = {}
    dtype = torch.get_default_dtype()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            torch.set_default_dtype(torch.float32)
            for _ in range(batches):
                _, masks_enc, masks_pred = collator([torch.zeros(1)] * D.BATCH)
                context += D.boolean(masks_enc).sum(axis=(0, 1))
                target += D.boolean(masks_pred).sum(axis=(0, 1))
                k, t = int(masks_enc[0].shape[1]), int(masks_pred[0].shape[1])
                context_counts[k] = context_counts.get(k, 0) + 1
                target_counts[t] = target_counts.get(t, 0) + 1
    finally:
        torch.set_default_dtype(dtype)
    return {"seed": seed, "batches": batches, "images": batches * D.BATCH, "context_per_patch": context.tolist(),
            "target_per_patch": target.tolist(),
            "context_counts": {str(k): v for k, v in sorted(context_counts.items())},
            "target_counts": {str(k): v for k, v in sorted(target_counts.items())}}


# ------------------------------------------------------------------------------------------------------- a run
class Observer:
    """What the run records, through the observation-only wrappers ``install`` sets in ``src.train``."""

    def __init__(self, weights: dict[str, dict[str, torch.Tensor]]):
        self.weights = weights
        self.steps: list[dict] = [{} for _ in range(STEPS)]
        self.checksums: dict[str, dict] = {}
        self.models: dict[str, nn.Module] = {}
        self.optimizer = None
        self.names: dict[int, str] = {}
        self.it = 0
        self.tables_equal: dict[str, bool] = {}

    # ---- the wrappers
    def init_model(self, official_init_model, **kwargs):
        encoder, predictor = official_init_model(**kwargs)
        for network, model in (("encoder", encoder), ("predictor", predictor)):
            own = model.state_dict()
            for name in W.FIXED[network]:  # the official fixed tables are the ones ijepa_weights computes
                self.tables_equal[name] = bool(torch.equal(own[name], self.weights[network][name]))
            assert list(own) == list(self.weights[network]), network
            model.load_state_dict(self.weights[network], strict=True)
            self.models[network] = model
        return encoder, predictor

    def init_opt(self, official_init_opt, **kwargs):
        optimizer, scaler, scheduler, wd_scheduler = official_init_opt(**kwargs)
        self.optimizer = optimizer
        for network in ("encoder", "predictor"):
            for name, p in self.models[network].named_parameters():
                self.names[id(p)] = f"{network}.{name}"
        optimizer.register_step_pre_hook(self.step_pre_hook)
        return optimizer, scaler, scheduler, wd_scheduler

    def deepcopy(self, value, *args):
        out = copy.deepcopy(value, *args)
        if value is self.models.get("encoder"):
            self.models["target_encoder"] = out
        return out

    def gpu_timer(self, official_gpu_timer, closure, log_timings=True):
        result, elapsed = official_gpu_timer(closure, log_timings)
        loss, new_lr, new_wd, stats = result
        self.steps[self.it].update({
            "loss": loss, "lr": new_lr, "weight_decay": new_wd,
            # grad_logger: the encoder's weight matrices (no bias, no 1-D tensor) that have a gradient
            "grad_stats": {"first_layer": stats.first_layer, "last_layer": stats.last_layer, "min": stats.min,
                           "max": stats.max, "avg": stats.avg, "count": stats.count},
        })
        return result, elapsed

    def next(self, iterator, *default):
        value = builtins.next(iterator, *default)
        self.steps[self.it]["momentum"] = value
        return value

    def smooth_l1_loss(self, z, h, *args, **kwargs):
        # the targets are layer-normed tokens: their sum nearly cancels (each token's is 0), so their checksum is
        # [sum of absolute values, sum of squares]
        self.steps[self.it].update({"predictions": pair(z), "targets": W.abs_checksums(h), "shape": list(z.shape)})
        return F.smooth_l1_loss(z, h, *args, **kwargs)

    # ---- the hooks
    def step_pre_hook(self, optimizer, *_):
        norms = {self.names[id(p)]: float(torch.linalg.vector_norm(p.grad)) for g in optimizer.param_groups
                 for p in g["params"] if p.grad is not None}
        total = lambda prefix: math.sqrt(sum(v * v for n, v in norms.items() if n.startswith(prefix)))  # noqa: E731
        self.steps[self.it].update({
            "grad_norm_encoder": total("encoder."), "grad_norm_predictor": total("predictor."),
            "params_with_grad": len(norms),
            "group_lr": [float(g["lr"]) for g in optimizer.param_groups],
            "group_weight_decay": [float(g["weight_decay"]) for g in optimizer.param_groups],
        })

    def before_step(self, it: int) -> None:
        if it == 0:  # the models are built and loaded: the state before the first step
            self.checksums["initial"] = self.snapshot()
        self.it = it
        self.steps[it].update({"step": it, "epoch": it // STEPS_PER_EPOCH})

    def after_step(self, it: int) -> None:
        if it in CHECKSUM_STEPS:
            self.checksums[str(it)] = self.snapshot()

    def snapshot(self) -> dict:
        out = {}
        for network, names in TENSORS.items():
            state = dict(self.models[network].named_parameters())
            out[network] = {n: pair(state[n]) for n in names}
            trained = [pair(p) for n, p in state.items() if n not in W.FIXED_NAMES]
            out[network]["all_parameters"] = [sum(p[0] for p in trained), sum(p[1] for p in trained)]
        return out

    def install(self, train, vit) -> None:
        """The patches (the model's name, the data) and the observation wrappers, as ``src.train``'s globals."""
        vit.__dict__[MODEL_NAME] = partial(vit.VisionTransformer, embed_dim=W.EMBED, depth=W.DEPTH, num_heads=W.HEADS,
                                           mlp_ratio=W.MLP_RATIO, qkv_bias=True, in_chans=W.IN_CHANS,
                                           norm_layer=partial(nn.LayerNorm, eps=W.LN_EPS))
        train.init_model = partial(self.init_model, train.init_model)
        train.init_opt = partial(self.init_opt, train.init_opt)
        train.copy = O.Proxy(copy, deepcopy=self.deepcopy)
        train.gpu_timer = partial(self.gpu_timer, train.gpu_timer)
        train.next = self.next
        train.F = O.Proxy(F, smooth_l1_loss=self.smooth_l1_loss)


def run(train, vit, args: dict, batches: list[torch.Tensor], weights: dict) -> dict:
    """The official ``main(args)`` on the given batches and weights; returns the records."""
    observer = Observer(weights)
    observer.install(train, vit)
    drawn: dict = {}

    def make_imagenet1k(transform, batch_size, collator=None, **kwargs):
        assert batch_size == D.BATCH and kwargs["drop_last"] and kwargs["training"]
        items, relaxed = collate_all(collator, batches)
        drawn.update(items=items, relaxed=relaxed, collator=collator)
        loader = Loader(items, observer.before_step, observer.after_step)
        return None, loader, Sampler(loader)

    train.make_imagenet1k = make_imagenet1k
    train.main(args=args)
    assert observer.it == STEPS - 1 and drawn["collator"]._itr_counter.value == STEPS - 1
    optimizer = observer.optimizer
    named = {id(p): n for network in ("encoder", "predictor")
             for n, p in [(f"{network}.{k}", v) for k, v in observer.models[network].named_parameters()]}
    defaults = {k: (list(v) if isinstance(v, tuple) else v) for k, v in optimizer.defaults.items()
                if isinstance(v, (bool, int, float, tuple, type(None)))}
    return {
        "items": drawn["items"], "relaxed": drawn["relaxed"], "tables_equal": observer.tables_equal,
        "param_groups": [{"group": label, "WD_exclude": bool(g.get("WD_exclude", False)),
                          "params": [named[id(p)] for p in g["params"]]}
                         for label, g in zip(GROUPS, optimizer.param_groups)],
        "not_trained": [n for network in ("encoder", "predictor")
                        for n, p in observer.models[network].named_parameters() if not p.requires_grad],
        "optimizer": {"class": type(optimizer).__name__, "defaults": defaults},
        "steps": observer.steps,
        "checksums": observer.checksums,
    }


# ------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = O.command_line(__doc__.split("\n\n")[0], "facebookresearch/ijepa",
                            HERE / "fixtures" / "ijepa_official.json")
    cli = parser.parse_args()
    repo = cli.official.resolve()
    torch.set_num_threads(cli.threads)
    for message in (r".*torch\.cuda\.amp\..*is deprecated", r"CUDA is not available"):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=FutureWarning)
    started = time.time()

    spec = D.make_spec(VIEW_SEED)
    images, _ = V.load_train_images(cli.data_root)
    batches = [D.render(spec, step, images) for step in range(STEPS)]
    weights = W.initial_weights(WEIGHT_SEED)
    torch.set_default_dtype(torch.float64)

    fixture: dict = {
        "about": "Reference trajectory of the official I-JEPA training step, tiny, CPU, float64: "
                 "tests/parity/make_ijepa.py (see tests/parity/README.md).",
        "official": {"repository": "facebookresearch/ijepa", "commit": O.commit_of(repo), "license": "CC-BY-NC 4.0",
                     "files": list(OFFICIAL_FILES), "run": "src/train.py main(args), unmodified"},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                        "torchvision": importlib.import_module("torchvision").__version__,
                        "torch_threads": torch.get_num_threads(), "cuda_visible": torch.cuda.is_available()},
        "settings": {
            "steps_per_epoch": STEPS_PER_EPOCH, "epochs": EPOCHS, "dtype": "float64",
            "view_seed": VIEW_SEED, "mask_seed": MASK_SEED, "weight_seed": WEIGHT_SEED,
            "checksum_steps": list(CHECKSUM_STEPS),
            "checksums": "[sum, sum of squares] in float64; checksums[k] is the state after step k (optimizer step "
                         "and EMA done), 'initial' before step 0; all_parameters: the trained ones (no fixed table)",
            "schedules": {
                "lr": "WarmupCosineSchedule, stepped before each step: step k has its value at k + 1: start_lr + "
                      "(k + 1) (lr - start_lr) / W while k + 1 < W (W = int(warmup * ipe) = 10), then final_lr + "
                      "(lr - final_lr) (1 + cos(pi (k + 1 - W) / (T - W))) / 2, T = int(ipe_scale * epochs * ipe)",
                "weight_decay": "CosineWDSchedule, stepped before each step: step k has final_wd + (wd - final_wd) "
                                "(1 + cos(pi (k + 1) / T)) / 2 in the groups without WD_exclude",
                "momentum": "update k (after the optimizer step) uses ema[0] + k (ema[1] - ema[0]) / (ipe * epochs * "
                            "ipe_scale) (train.py:228-229; ipe_scale 1.0 in every official config)",
            },
            "model": {"encoder": {**W.MODEL, "norm_layer": "partial(nn.LayerNorm, eps=1e-6)", "class_token": None},
                      "predictor": {**W.PREDICTOR, "mlp_ratio": 4, "qkv_bias": True,
                                    "norm_layer": "partial(nn.LayerNorm, eps=1e-6)"}},
        },
    }

    with tempfile.TemporaryDirectory(prefix="clrun-parity-") as tmp, O.official(repo):
        one_process_group(tmp)
        train = importlib.import_module("src.train")
        vit = importlib.import_module("src.models.vision_transformer")
        if not cli.verbose:
            logging.getLogger().setLevel(logging.WARNING)
        args = config(tmp)
        fixture["official"]["config"] = config("(temporary folder)")
        log = io.StringIO()
        with contextlib.redirect_stdout(sys.stdout if cli.verbose else log):
            result = run(train, vit, args, batches, weights)
            generator_probe = probe(mask_collator(train, args["mask"]))

    items = result.pop("items")
    context = np.stack([D.boolean(masks_enc)[0] for _, masks_enc, _ in items])
    targets = np.stack([D.boolean(masks_pred) for _, _, masks_pred in items])
    assert all(torch.equal(udata[0], batch) for (udata, _, _), batch in zip(items, batches))
    fixture["views"] = {"spec_sha256": D.spec_sha256(spec), "batch_checksums": [pair(b) for b in batches]}
    fixture["masks"] = {
        "packed": D.pack(context, targets),
        "context_count": [int(masks_enc[0].shape[1]) for _, masks_enc, _ in items],
        "target_count": [int(masks_pred[0].shape[1]) for _, _, masks_pred in items],
        "relaxed_contexts": result.pop("relaxed"),
        "probe": generator_probe,
        "drawn": "the official MaskCollator of main(), called on the 30 batches in order (its step counter "
                 "0..29 seeds the block sizes) after torch.manual_seed(mask_seed), default dtype float32",
    }
    fixture["initial_weights"] = {network: {name: pair(t) for name, t in state.items()}
                                  for network, state in weights.items()}
    fixture["fixed_tables_equal_to_official"] = result.pop("tables_equal")
    assert all(fixture["fixed_tables_equal_to_official"].values()), "ijepa_weights' sin-cos tables drifted"
    fixture.update(result)

    size = O.write_fixture(cli.out, fixture)
    print(f"wrote {cli.out} ({size / 1024:.1f} kB) in {time.time() - started:.1f} s; official commit "
          f"{fixture['official']['commit']}")
    losses = [s["loss"] for s in fixture["steps"]]
    print(f"  losses {losses[:3]} ... {losses[-3:]}")


if __name__ == "__main__":
    main()
