"""A reference trajectory of the official iBOT training step (bytedance/ibot), tiny, on the CPU, float64.

It runs the official ``main_ibot.train_one_epoch`` itself, unmodified, for 3 "epochs" of 10 steps, on the views of
``views.py`` (Fashion-MNIST, batch 8, 2 global crops of 28 px, 2 local crops of 14 px: DINO's) with the masks of
the official ``loader.ImageFolderMask`` (block-wise, drawn with Python's ``random`` seeded, bit-packed into the
fixture: ``ibot_data.py``), from the weights of ``ibot_data.initial_weights`` (DINO's and a mask token), with the
official ``iBOTLoss``, ``utils.MultiCropWrapper``, ``utils.get_params_groups``, ``utils.cosine_scheduler``,
``utils.clip_gradients``, ``utils.cancel_gradients_last_layer``, ``models.VisionTransformer`` and
``models.head.iBOTHead`` (made tiny), ``torch.optim.AdamW(params_groups)`` and DDP, built as ``train_ibot`` builds
them (main_ibot.py), with the settings given as the official command-line flags (``flags``). It records, per step,
what a reimplementation must reproduce, in ``fixtures/ibot_official.json``.

Two runs share the views, masks and weights:

* ``multicrop``: ``--shared_head true`` (one set of prototypes for the class and the patch tokens), as the README's
  ViT-S/16 command and cl-run's iBOT; every quantity recorded;
* ``separate_head``: the official default ``--shared_head false`` (the student's patch tokens get prototypes of
  their own, ``last_layer2``; the teacher's are shared, ``--shared_head_teacher true``), the patch prototypes
  starting equal to the class ones; only the loss and its parts recorded. cl-run has one shared head: this run
  shows where that departs from the default (when the last layer is released).

The flags differ from iBOT's defaults where the run must be tiny or deterministic (``--drop_path 0``, the lr, the
epochs) and in the teacher temperatures: class 0.04 -> 0.07 (the README's), patch 0.05 -> 0.06 (the default is
0.04 -> 0.07, the class ramp's: with equal ramps a swap of the two would not show), both over
``--warmup_teacher_temp_epochs 2``. ``--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`` (the README's ViT-S/16): each
crop of each image is masked with probability 1/2, over a ratio uniform in [0.1, 0.5]; ``--norm_last_layer false``
(the README's ViT-S/16): the prototypes' norms train too.

Usage (DIR: a tree of bytedance/ibot at the commit of README.md, with that commit in ``DIR/.commit`` when it is not
a git checkout)::

    .venv/bin/python tests/parity/make_ibot.py --official DIR

What is patched to run the official code on today's torch, on a CPU, without its launcher (nothing in its files
is edited; each patch is made below, where it is applied):

* ``tensorboardX`` (imported by main_ibot.py for ``SummaryWriter``, used only in ``train_ibot``, which is not
  run) is a module with ``SummaryWriter = None`` while the official code is imported;
* ``evaluation.unsupervised.unsup_cls`` (imported for ``eval_pred``; it needs scikit-learn and munkres) is a
  module whose ``eval_pred`` returns ``(nan, nan, nan, -1)``: ``train_one_epoch`` calls it once at the end of
  an epoch, on the teacher's argmax against the labels, for logging only;
* ``utils.init_distributed_mode`` (NCCL, a GPU) is not called: a one-process gloo group (``file://`` store) is
  made instead, which ``iBOTLoss.update_center``'s ``dist.all_reduce``, ``utils.concat_all_gather`` and DDP need;
* ``main_ibot``'s global ``torch`` is a proxy whose ``cuda.synchronize`` does nothing (no GPU; it only times);
  ``torch.cuda.amp.autocast(False)`` (``--use_fp16 false``) runs as is;
* ``images = [im.cuda(non_blocking=True) ...]`` and ``masks = [msk.cuda(...) ...]``: the loader yields crops and
  masks wrapped in an object whose ``cuda()`` returns the CPU tensor (no tensor method is patched);
* ``utils.MetricLogger.synchronize_between_processes`` (logging only; its tensor is made on ``'cuda'``) does
  nothing: with one process its all-reduce is the identity;
* DDP wraps the student without ``device_ids`` (CPU);
* ``torch.set_default_dtype(torch.float64)`` before the models are built: everything runs in float64;
* the architecture: ``--arch vit_tiny`` names it, but the model is ``models.VisionTransformer`` built as
  ``vit_tiny`` is (mlp_ratio 4, qkv_bias, LayerNorm eps 1e-6) with width 64, depth 2, 2 heads, 7 px patches,
  28 px, 1 channel (``weights.official_backbone``); ``iBOTHead`` with hidden 64, bottleneck 32 (the official
  script uses its defaults 2048/256);
* ``--drop_path 0`` (the official default 0.1 is stochastic depth: random);
* the data: 10 batches per epoch from ``views.py`` and the masks drawn beforehand, instead of
  ``ImageFolderMask`` + ``DataAugmentationiBOT`` + ``DistributedSampler``: the masks are drawn by the official
  ``ImageFolderMask.__getitem__`` itself, on a folder of one blank 28 x 28 image with a transform that returns
  blank crops of the four sizes (the masks depend only on the crops' sizes), image after image in the fixture's
  order, ``set_epoch(epoch)`` as the training loop sets it, after ``random.seed(MASK_SEED)``;
* the weights: the student starts from ``ibot_data.official_student_state`` (``weights.py``'s, the mask token
  drawn, the patch prototypes equal to the class prototypes); the teacher loads the student's state dict with
  ``strict=False``, as main_ibot.py does.

Observation only (no change to what runs): a forward hook on ``iBOTLoss`` (the loss and its parts, temperatures,
centers, outputs), a wrapper around ``utils.clip_gradients`` that records the norms it returns, an optimizer step
pre-hook (the gradients AdamW steps with) and the loader, which records the state after each step before it hands
out the next batch.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import math
import platform
import random
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.parity import ibot_data as D  # noqa: E402
from tests.parity import official_code as O  # noqa: E402
from tests.parity import views as V  # noqa: E402
from tests.parity import weights as W  # noqa: E402
from tests.parity.make_dino import Loader as _DinoLoader  # noqa: E402
from tests.parity.make_dino import _OnHost, one_process_group  # noqa: E402

STEPS_PER_EPOCH = 10
EPOCHS = 3
CHECKSUM_STEPS = (0, 10, 20, 29)
VIEW_SEED = 0
WEIGHT_SEED = 0
# Student and teacher tensors whose [sum, sum of squares] are recorded at CHECKSUM_STEPS (after the step).
STUDENT_TENSORS = ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight",
                   "backbone.blocks.1.mlp.fc2.weight", "backbone.masked_embed", "head.mlp.0.weight",
                   "head.last_layer.weight_v", "head.last_layer.weight_g")
TEACHER_TENSORS = ("backbone.cls_token", "backbone.blocks.1.mlp.fc2.weight", "head.last_layer.weight_v",
                   "head.last_layer.weight_g")
RUNS = {"multicrop": True, "separate_head": False}  # run -> --shared_head
SEPARATE_HEAD_KEYS = ("step", "loss", "cls", "patch")  # what the separate_head run keeps per step
# The generator probe: the official ImageFolderMask at one fixed ratio, many draws on the 4 x 4 grid.
PROBE_RATIOS = (0.3, 0.47)
PROBE_DRAWS = 2000


def flags(shared_head: bool, output_dir: str) -> list[str]:
    """The official command line of a run (main_ibot.py's get_args_parser)."""
    return [
        "--arch", "vit_tiny", "--patch_size", str(W.PATCH), "--out_dim", str(W.OUT_DIM),
        "--patch_out_dim", str(W.OUT_DIM), "--shared_head", str(shared_head).lower(), "--shared_head_teacher", "true",
        "--norm_last_layer", "false", "--momentum_teacher", "0.996", "--act_in_head", "gelu",
        "--use_masked_im_modeling", "true", "--pred_ratio", "0", "0.3", "--pred_ratio_var", "0", "0.2",
        "--pred_shape", "block", "--pred_start_epoch", "0", "--lambda1", "1.0", "--lambda2", "1.0",
        "--warmup_teacher_temp", "0.04", "--teacher_temp", "0.07",
        "--warmup_teacher_patch_temp", "0.05", "--teacher_patch_temp", "0.06", "--warmup_teacher_temp_epochs", "2",
        "--use_fp16", "false", "--weight_decay", "0.04", "--weight_decay_end", "0.4", "--clip_grad", "3.0",
        "--batch_size_per_gpu", str(V.BATCH), "--epochs", str(EPOCHS), "--freeze_last_layer", "1",
        # lr * batch_size_per_gpu * world_size / 256 = 0.016 * 8 / 256 = 5e-4 (main_ibot.py's linear scaling)
        "--lr", "0.016", "--warmup_epochs", "1", "--min_lr", "1e-6", "--optimizer", "adamw", "--drop_path", "0.0",
        "--global_crops_number", str(V.GLOBAL_CROPS), "--global_crops_scale", "0.4", "1.0",
        "--local_crops_number", str(V.LOCAL_CROPS), "--local_crops_scale", "0.1", "0.4", "--seed", "0",
        "--data_path", "(views.py: Fashion-MNIST)", "--output_dir", output_dir,
    ]


def pair(t: torch.Tensor) -> list[float]:
    return W.checksums(t)


# --------------------------------------------------------------------------------------------- the patches
@contextlib.contextmanager
def absent_dependencies():
    """``tensorboardX`` and ``evaluation.unsupervised.unsup_cls`` as stand-ins while the official code is imported
    (the module docstring says why); sys.modules as it was afterwards."""
    def module(name: str, **attributes) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attributes)
        return m

    stand_ins = {
        "tensorboardX": module("tensorboardX", SummaryWriter=None),
        "evaluation": module("evaluation", __path__=[]),
        "evaluation.unsupervised": module("evaluation.unsupervised", __path__=[]),
        "evaluation.unsupervised.unsup_cls": module(
            "evaluation.unsupervised.unsup_cls", eval_pred=lambda label, pred, calc_acc=False: (math.nan,) * 3 + (-1,)),
    }
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


# ------------------------------------------------------------------------------------------------------ masks
def official_mask_dataset(loader, folder: Path, args, ratio=None, ratio_var=None):
    """The official ``ImageFolderMask`` as ``train_ibot`` builds it (``args``' pred_* flags, or a fixed ``ratio``),
    over ``folder``: one blank image whose transform gives blank crops of the run's sizes (global, then local)."""
    sizes = [V.GLOBAL_SIZE] * args.global_crops_number + [V.LOCAL_SIZE] * args.local_crops_number
    blank_crops = lambda image: [torch.zeros(1, s, s) for s in sizes]  # noqa: E731 (the masks read the shapes only)
    return loader.ImageFolderMask(
        str(folder), transform=blank_crops, patch_size=args.patch_size,
        pred_ratio=args.pred_ratio if ratio is None else [ratio],
        pred_ratio_var=args.pred_ratio_var if ratio_var is None else [ratio_var],
        pred_aspect_ratio=(0.3, 1 / 0.3), pred_shape=args.pred_shape, pred_start_epoch=args.pred_start_epoch)


def blank_image_folder(root: Path) -> Path:
    """An ImageFolder of one class and one blank 28 x 28 image."""
    from PIL import Image

    (root / "blank").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((V.SOURCE, V.SOURCE), dtype=np.uint8)).save(root / "blank" / "0.png")
    return root


def draw_masks(dataset) -> list[list[np.ndarray]]:
    """``[step][crop]``: ``(batch, H, W)`` bool, what the official DataLoader collates from ``dataset[i][2]``
    for the 8 images of each step, in order, after ``random.seed(MASK_SEED)``."""
    random.seed(D.MASK_SEED)
    steps = []
    for step in range(EPOCHS * STEPS_PER_EPOCH):
        dataset.set_epoch(step // STEPS_PER_EPOCH)
        per_image = [dataset[0][2] for _ in range(V.BATCH)]
        steps.append([np.stack([image[c] for image in per_image]) for c in range(len(per_image[0]))])
    return steps


def probe(loader, folder: Path, args) -> dict:
    """How many patches the official generator hides at a fixed ratio (pred_ratio_var 0), over PROBE_DRAWS
    draws on the 4 x 4 grid: ``{ratio: {hidden count: draws}}``. The official loop adds blocks while fewer than
    ``ratio * 16`` are hidden and accepts one only if the total stays at most that, so never more than
    ``floor(ratio * 16)`` are hidden."""
    out = {}
    for ratio in PROBE_RATIOS:
        dataset = official_mask_dataset(loader, folder, args, ratio=ratio, ratio_var=0.0)
        random.seed(D.MASK_SEED)
        counts: dict[int, int] = {}
        for _ in range(PROBE_DRAWS):
            hidden = int(dataset[0][2][0].sum())
            counts[hidden] = counts.get(hidden, 0) + 1
        out[str(ratio)] = {str(k): counts[k] for k in sorted(counts)}
    return out


# ------------------------------------------------------------------------------------------------------- a run
class Loader(_DinoLoader):
    """One epoch of the official DataLoader: ``(list of crops (B, 1, S, S), labels, list of masks (B, H, W))``
    per step; after a step's body ``after_step(it)`` records the state (make_dino.Loader, with the masks)."""

    def __init__(self, epoch: int, batches, masks, after_step):
        super().__init__(epoch, batches, after_step)
        self.masks = masks

    def __iter__(self):
        for i in range(STEPS_PER_EPOCH):
            it = self.epoch * STEPS_PER_EPOCH + i
            crops = self.batches[it]
            masks = [_OnHost(torch.from_numpy(m)) for m in self.masks[it]]
            yield [_OnHost(c) for c in crops], torch.zeros(crops[0].shape[0], dtype=torch.int64), masks
            self.after_step(it)


def build(main_ibot, utils, models, head, args, weights):
    """train_ibot's networks, loss, optimizer and schedules (main_ibot.py, from "building student and teacher
    networks" to "init schedulers"), the models tiny: (student (DDP), teacher, ibot_loss, optimizer, lr, wd and
    momentum schedules)."""
    def ibot_head(**options):
        return head.iBOTHead(W.EMBED, args.out_dim, patch_out_dim=args.patch_out_dim, norm=args.norm_in_head,
                             act=args.act_in_head, hidden_dim=W.HIDDEN, bottleneck_dim=W.BOTTLENECK, **options)

    student = utils.MultiCropWrapper(
        W.official_backbone(models, drop_path_rate=args.drop_path, return_all_tokens=True,
                            masked_im_modeling=args.use_masked_im_modeling),
        ibot_head(norm_last_layer=args.norm_last_layer, shared_head=args.shared_head))
    teacher = utils.MultiCropWrapper(W.official_backbone(models, return_all_tokens=True),
                                     ibot_head(shared_head=args.shared_head_teacher))
    student.load_state_dict(D.official_student_state(weights))  # the common initial weights
    assert not utils.has_batchnorms(student)
    teacher_without_ddp = teacher  # no batch norms: the teacher is not DDP-wrapped
    student = nn.parallel.DistributedDataParallel(student)  # CPU: no device_ids
    teacher_without_ddp.load_state_dict(student.module.state_dict(), strict=False)
    for p in teacher.parameters():
        p.requires_grad = False
    same_dim = args.shared_head or args.shared_head_teacher
    ibot_loss = main_ibot.iBOTLoss(
        args.out_dim, args.out_dim if same_dim else args.patch_out_dim, args.global_crops_number,
        args.local_crops_number, args.warmup_teacher_temp, args.teacher_temp, args.warmup_teacher_patch_temp,
        args.teacher_patch_temp, args.warmup_teacher_temp_epochs, args.epochs, lambda1=args.lambda1,
        lambda2=args.lambda2, mim_start_epoch=args.pred_start_epoch)
    assert args.optimizer == "adamw" and not args.use_fp16
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    niter_per_ep = STEPS_PER_EPOCH  # len(data_loader)
    lr_schedule = utils.cosine_scheduler(args.lr * (args.batch_size_per_gpu * utils.get_world_size()) / 256.,
                                         args.min_lr, args.epochs, niter_per_ep, warmup_epochs=args.warmup_epochs)
    wd_schedule = utils.cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, niter_per_ep)
    momentum_schedule = utils.cosine_scheduler(args.momentum_teacher, 1, args.epochs, niter_per_ep)
    return student, teacher, ibot_loss, optimizer, lr_schedule, wd_schedule, momentum_schedule


def run(main_ibot, utils, models, head, args, weights, batches, masks) -> dict:
    """The set-up of ``build`` and the official train_one_epoch for each epoch; returns the per-step records."""
    utils.fix_random_seeds(args.seed)  # as train_ibot; nothing random is drawn below
    student, teacher, ibot_loss, optimizer, lr_schedule, wd_schedule, momentum_schedule = build(
        main_ibot, utils, models, head, args, weights)
    names = {id(p): n.removeprefix("module.") for n, p in student.named_parameters()}
    steps: list[dict] = [{} for _ in range(args.epochs * STEPS_PER_EPOCH)]
    current = {"it": 0}
    checksums: dict[str, dict] = {}

    def loss_hook(module, inputs, output):
        (student_cls, student_patch), (teacher_cls, teacher_patch), local_cls, student_masks, epoch = inputs
        all_cls = student_cls if local_cls is None else torch.cat([student_cls, local_cls])
        steps[current["it"]].update({
            "step": current["it"], "epoch": int(epoch),
            "loss": output["loss"].item(), "cls": output["cls"].item(), "patch": output["patch"].item(),
            "teacher_temp": float(module.teacher_temp_schedule[epoch]),
            "teacher_patch_temp": float(module.teacher_temp2_schedule[epoch]),
            # after update_center, which forward ends with
            "center_norm": float(module.center.norm()), "center2_norm": float(module.center2.norm()),
            "student_cls": pair(all_cls), "student_patch": pair(student_patch),
            "teacher_cls": pair(teacher_cls), "teacher_patch": pair(teacher_patch),
            "hidden": int(sum(int(m.sum()) for m in student_masks[:args.global_crops_number])),
        })

    ibot_loss.register_forward_hook(loss_hook)
    clip_gradients = O.record_gradients(utils, optimizer, lambda: steps[current["it"]], names)

    def snapshot() -> dict:
        s = dict(student.module.named_parameters())
        t = dict(teacher.named_parameters())
        return {"student": {n: pair(s[n]) for n in STUDENT_TENSORS},
                "teacher": {n: pair(t[n]) for n in TEACHER_TENSORS},
                "center": pair(ibot_loss.center), "center2": pair(ibot_loss.center2)}

    def after_step(it: int) -> None:
        steps[it].update({
            "lr": [float(g["lr"]) for g in optimizer.param_groups],
            "weight_decay": [float(g["weight_decay"]) for g in optimizer.param_groups],
            "momentum": float(momentum_schedule[it]),
        })
        if it in CHECKSUM_STEPS:
            checksums[str(it)] = snapshot()
        current["it"] = it + 1

    checksums["initial"] = snapshot()
    try:
        for epoch in range(args.epochs):
            main_ibot.train_one_epoch(student, teacher, teacher, ibot_loss, Loader(epoch, batches, masks, after_step),
                                      optimizer, lr_schedule, wd_schedule, momentum_schedule, epoch, None, args)
    finally:
        utils.clip_gradients = clip_gradients
    assert current["it"] == args.epochs * STEPS_PER_EPOCH
    return {
        "param_groups": [sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups],
        "schedules": {"lr": lr_schedule.tolist(), "weight_decay": wd_schedule.tolist(),
                      "momentum": momentum_schedule.tolist(),
                      "teacher_temp_per_epoch": ibot_loss.teacher_temp_schedule.tolist(),
                      "teacher_patch_temp_per_epoch": ibot_loss.teacher_temp2_schedule.tolist()},
        "steps": steps,
        "checksums": checksums,
    }


# ------------------------------------------------------------------------------------------------------- main
def spec_digest(spec: dict) -> str:
    """SHA-256 of ``views.spec_to_json(spec)`` (sorted keys): the views are DINO's, stored in full there."""
    return hashlib.sha256(json.dumps(V.spec_to_json(spec), sort_keys=True).encode()).hexdigest()


def main() -> None:
    cli = O.command_line(__doc__.split("\n\n")[0], "bytedance/ibot",
                         HERE / "fixtures" / "ibot_official.json").parse_args()
    repo = cli.official.resolve()
    torch.set_num_threads(cli.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.cuda.amp.autocast, timm.models.layers
    warnings.filterwarnings("ignore", category=SyntaxWarning)  # models/swin_transformer.py: "is" with a literal
    started = time.time()

    spec = V.make_spec(VIEW_SEED)
    images, _ = V.load_train_images(cli.data_root)
    all_crops = [V.render(spec, step, images) for step in range(V.STEPS)]
    weights = D.initial_weights(WEIGHT_SEED)
    torch.set_default_dtype(torch.float64)

    fixture: dict = {
        "about": "Reference trajectory of the official iBOT training step, tiny, CPU, float64: "
                 "tests/parity/make_ibot.py (see tests/parity/README.md).",
        "official": {"repository": "bytedance/ibot", "commit": O.commit_of(repo)},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "numpy": np.__version__, "timm": importlib.import_module("timm").__version__,
                        "torchvision": importlib.import_module("torchvision").__version__,
                        "torch_threads": torch.get_num_threads()},
        "settings": {
            "steps_per_epoch": STEPS_PER_EPOCH, "epochs": EPOCHS, "dtype": "float64",
            "view_seed": VIEW_SEED, "weight_seed": WEIGHT_SEED, "mask_seed": D.MASK_SEED,
            "masked_embed_seed": D.MASKED_EMBED_SEED, "checksum_steps": list(CHECKSUM_STEPS),
            "checksums": "[sum, sum of squares] in float64; checksums[k] is the state after step k "
                         "(optimizer step and teacher EMA done), 'initial' before step 0",
            "model": {"timm_model": W.TIMM_MODEL, "timm_args": W.TIMM_ARGS, "mlp_ratio": W.MLP_RATIO,
                      "qkv_bias": True, "layernorm_eps": 1e-6,
                      "head": {"in_dim": W.EMBED, "hidden_dim": W.HIDDEN, "bottleneck_dim": W.BOTTLENECK,
                               "out_dim": W.OUT_DIM, "nlayers": W.HEAD_LAYERS, "norm": None, "act": "gelu",
                               "norm_last_layer": False}},
        },
        "views": {"spec": f"views.make_spec({VIEW_SEED}), stored in full in dino_official.json",
                  "spec_sha256": spec_digest(spec),
                  "crop_checksums": [[pair(c) for c in crops] for crops in all_crops]},
        "initial_weights": {name: pair(t) for name, t in weights.items()},
    }

    with tempfile.TemporaryDirectory(prefix="clrun-parity-") as tmp, O.official(repo), absent_dependencies():
        main_ibot = importlib.import_module("main_ibot")
        utils = importlib.import_module("utils")
        models = importlib.import_module("models")
        head = importlib.import_module("models.head")
        loader = importlib.import_module("loader")
        official_parser = argparse.ArgumentParser("iBOT", parents=[main_ibot.get_args_parser()])
        main_ibot.torch = O.Proxy(torch, cuda=O.Proxy(torch.cuda, synchronize=lambda device=None: None))
        utils.MetricLogger.synchronize_between_processes = lambda self: None
        one_process_group(tmp)

        folder = blank_image_folder(Path(tmp) / "images")
        fixture["official"]["flags"] = {}
        fixture["masks"] = {}  # filled with the first run's flags
        fixture["runs"] = {}
        masks = None
        for variant, shared_head in RUNS.items():
            command = flags(shared_head, tmp)
            args = official_parser.parse_args(command)
            fixture["official"]["flags"][variant] = [f if f != tmp else "(temporary folder)" for f in command]
            if masks is None:
                masks = draw_masks(official_mask_dataset(loader, folder, args))
                fixture["masks"] = {
                    "generator": "the official loader.ImageFolderMask (--pred_ratio 0 0.3 --pred_ratio_var 0 0.2 "
                                 "--pred_shape block), random.seed(mask_seed), images in order",
                    "grid": [D.GRID, D.GRID],
                    "packed": D.pack(np.stack([np.stack(m[:args.global_crops_number]) for m in masks])),
                    "probe": probe(loader, folder, args),
                }
            log = io.StringIO()
            with contextlib.redirect_stdout(sys.stdout if cli.verbose else log):
                result = run(main_ibot, utils, models, head, args, weights, all_crops, masks)
            if not shared_head:
                result = {"param_groups": result["param_groups"],
                          "steps": [{k: s[k] for k in SEPARATE_HEAD_KEYS} for s in result["steps"]]}
            fixture["runs"][variant] = result
        dist.destroy_process_group()

    size = O.write_fixture(cli.out, fixture)
    print(f"wrote {cli.out} ({size / 1024:.1f} kB) in {time.time() - started:.1f} s; official commit "
          f"{fixture['official']['commit']}")
    print(f"  mask probe (hidden count: draws): {fixture['masks']['probe']}")
    for variant, result in fixture["runs"].items():
        losses = [s["loss"] for s in result["steps"]]
        print(f"  {variant}: losses {losses[:3]} ... {losses[-3:]}")


if __name__ == "__main__":
    main()
