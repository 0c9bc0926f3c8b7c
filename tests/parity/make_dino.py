"""A reference trajectory of the official DINO training step (facebookresearch/dino), tiny, on the CPU, float64.

It runs the official ``main_dino.train_one_epoch`` itself, unmodified, for 3 "epochs" of 10 steps, on the views
of ``views.py`` (Fashion-MNIST, batch 8, 2 global crops of 28 px, 2 local crops of 14 px) from the weights of
``weights.py``, with the official ``DINOLoss``, ``utils.MultiCropWrapper``, ``utils.get_params_groups``,
``utils.cosine_scheduler``, ``utils.clip_gradients``, ``utils.cancel_gradients_last_layer``, the official
``vision_transformer.VisionTransformer``/``DINOHead`` (made tiny), ``torch.optim.AdamW(params_groups)`` and DDP,
built as ``train_dino`` builds them (main_dino.py), with the settings given as the official command-line flags
(``FLAGS``). It records, per step, what a reimplementation must reproduce, in ``fixtures/dino_official.json``.

Two runs share the views and the weights: ``multicrop`` (2 global + 2 local crops, the official recipe) and
``global_only`` (``--local_crops_number 0``: the same 2 global crops only). The second exists because the official
ViT resamples its position embeddings for the 14 px local crops differently from timm (see README.md): a model
on timm's resampling can match ``global_only`` step for step, and ``multicrop`` only with the official resampling.

Usage (DIR: a tree of facebookresearch/dino at the commit of README.md, with that commit in ``DIR/.commit`` when it
is not a git checkout)::

    .venv/bin/python tests/parity/make_dino.py --official DIR

What is patched to run the official code on today's torch, on a CPU, without its launcher (nothing in its files
is edited; each patch is made below, where it is applied):

* ``torch.hub.list("facebookresearch/xcit:main")`` in ``get_args_parser`` (a download, for ``--arch`` choices)
  returns [] while the parser is built;
* ``utils.init_distributed_mode`` (NCCL, a GPU) is not called: a one-process gloo group (``file://`` store) is
  made instead, which ``DINOLoss.update_center``'s ``dist.all_reduce`` and DDP need;
* ``main_dino``'s global ``torch`` is a proxy whose ``cuda.synchronize`` does nothing (no GPU; it only times);
  everything else is torch's own. ``torch.cuda.amp.autocast(False)`` (``--use_fp16 false``) runs as is;
* ``images = [im.cuda(non_blocking=True) ...]``: the loader yields the crops wrapped in an object whose
  ``cuda()`` returns the float64 CPU tensor (no tensor method is patched);
* ``utils.MetricLogger.synchronize_between_processes`` (logging only; its tensor is made on ``'cuda'``) does
  nothing: with one process its all-reduce is the identity;
* DDP wraps the student without ``device_ids`` (CPU);
* ``torch.set_default_dtype(torch.float64)`` before the models are built: everything runs in float64;
* the architecture: ``--arch vit_tiny`` names it, but the model is ``VisionTransformer`` built as
  ``vit_tiny`` is (mlp_ratio 4, qkv_bias, LayerNorm eps 1e-6) with width 64, depth 2, 2 heads, 7 px patches,
  28 px, 1 channel; ``DINOHead`` with hidden 64, bottleneck 32 (the official script uses its defaults 2048/256);
* ``--drop_path_rate 0`` (the official default 0.1 is stochastic depth: random);
* the data: 10 batches per epoch from ``views.py`` instead of ``ImageFolder`` + ``DataAugmentationDINO`` +
  ``DistributedSampler``; the student and teacher start from ``weights.py``'s weights (loaded into the
  student; the teacher copies the student's state dict, as main_dino.py does).

Observation only (no change to what runs): a forward hook on ``DINOLoss`` (loss, temperature, center), a wrapper
around ``utils.clip_gradients`` that records the norms it returns, an optimizer step pre-hook (the gradients
AdamW steps with) and the loader, which records the state after each step before it hands out the next batch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import platform
import sys
import tempfile
import time
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
from tests.parity import official_code as O  # noqa: E402
from tests.parity import views as V  # noqa: E402
from tests.parity import weights as W  # noqa: E402

STEPS_PER_EPOCH = 10
EPOCHS = 3
CHECKSUM_STEPS = (0, 10, 20, 29)
VIEW_SEED = 0
WEIGHT_SEED = 0
# Student and teacher tensors whose [sum, sum of squares] are recorded at CHECKSUM_STEPS (after the step).
STUDENT_TENSORS = ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight",
                   "backbone.blocks.1.mlp.fc2.weight", "head.mlp.0.weight", "head.last_layer.weight_v")
TEACHER_TENSORS = ("backbone.cls_token", "backbone.blocks.1.mlp.fc2.weight", "head.last_layer.weight_v",
                   "head.last_layer.weight_g")


def flags(local_crops: int, output_dir: str) -> list[str]:
    """The official command line of the run (main_dino.py's get_args_parser)."""
    return [
        "--arch", "vit_tiny", "--patch_size", str(W.PATCH), "--out_dim", str(W.OUT_DIM),
        "--norm_last_layer", "true", "--momentum_teacher", "0.996", "--use_bn_in_head", "false",
        "--warmup_teacher_temp", "0.04", "--teacher_temp", "0.07", "--warmup_teacher_temp_epochs", "2",
        "--use_fp16", "false", "--weight_decay", "0.04", "--weight_decay_end", "0.4", "--clip_grad", "3.0",
        "--batch_size_per_gpu", str(V.BATCH), "--epochs", str(EPOCHS), "--freeze_last_layer", "1",
        # lr * batch_size_per_gpu * world_size / 256 = 0.016 * 8 / 256 = 5e-4 (main_dino.py's linear scaling)
        "--lr", "0.016", "--warmup_epochs", "1", "--min_lr", "1e-6", "--optimizer", "adamw",
        "--drop_path_rate", "0.0",
        "--global_crops_scale", "0.4", "1.0", "--local_crops_number", str(local_crops),
        "--local_crops_scale", "0.1", "0.4", "--seed", "0",
        "--data_path", "(views.py: Fashion-MNIST)", "--output_dir", output_dir,
    ]


# --------------------------------------------------------------------------------------------- the patches
class _OnHost:
    """A crop as the loader hands it out: ``.cuda(non_blocking=True)`` (main_dino.py) gives back the CPU tensor."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def cuda(self, non_blocking: bool = False) -> torch.Tensor:
        return self.tensor


def one_process_group(folder: str) -> None:
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)


def pair(t: torch.Tensor) -> list[float]:
    return W.checksums(t)


# ------------------------------------------------------------------------------------------------------- a run
class Loader:
    """One epoch of the official DataLoader: ``(list of crops (B, 1, S, S), labels)`` per step; after a step's
    body (the next batch is asked for, or the epoch ends) ``after_step(it)`` records the state."""

    def __init__(self, epoch: int, batches: list[list[torch.Tensor]], after_step):
        self.epoch, self.batches, self.after_step = epoch, batches, after_step

    def __len__(self) -> int:
        return STEPS_PER_EPOCH

    def __iter__(self):
        for i in range(STEPS_PER_EPOCH):
            it = self.epoch * STEPS_PER_EPOCH + i
            crops = self.batches[it]
            yield [_OnHost(c) for c in crops], torch.zeros(crops[0].shape[0], dtype=torch.int64)
            self.after_step(it)


def run(main_dino, utils, vits, args, weights: dict[str, torch.Tensor], batches: list[list[torch.Tensor]]) -> dict:
    """train_dino's set-up (main_dino.py, from "building student and teacher networks" to the epoch loop) and the
    official train_one_epoch for each epoch; returns the per-step records."""
    utils.fix_random_seeds(args.seed)  # as train_dino; nothing random is drawn below
    # ---- building student and teacher networks (main_dino.py: vits.__dict__[args.arch](...), tiny)
    student = utils.MultiCropWrapper(
        W.official_backbone(vits, drop_path_rate=args.drop_path_rate),
        W.official_head(vits, norm_last_layer=args.norm_last_layer, use_bn=args.use_bn_in_head),
    )
    teacher = utils.MultiCropWrapper(W.official_backbone(vits), W.official_head(vits, use_bn=args.use_bn_in_head))
    student.load_state_dict(W.official_state_dict(weights))  # the common initial weights
    assert not utils.has_batchnorms(student)
    teacher_without_ddp = teacher  # no batch norms: the teacher is not DDP-wrapped
    student = nn.parallel.DistributedDataParallel(student)  # CPU: no device_ids
    teacher_without_ddp.load_state_dict(student.module.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    # ---- loss, optimizer, schedules
    dino_loss = main_dino.DINOLoss(
        args.out_dim,
        args.local_crops_number + 2,
        args.warmup_teacher_temp,
        args.teacher_temp,
        args.warmup_teacher_temp_epochs,
        args.epochs,
    )
    params_groups = utils.get_params_groups(student)
    assert args.optimizer == "adamw"
    optimizer = torch.optim.AdamW(params_groups)
    fp16_scaler = None
    assert not args.use_fp16
    niter_per_ep = STEPS_PER_EPOCH  # len(data_loader)
    lr_schedule = utils.cosine_scheduler(
        args.lr * (args.batch_size_per_gpu * utils.get_world_size()) / 256.,
        args.min_lr, args.epochs, niter_per_ep, warmup_epochs=args.warmup_epochs,
    )
    wd_schedule = utils.cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, niter_per_ep)
    momentum_schedule = utils.cosine_scheduler(args.momentum_teacher, 1, args.epochs, niter_per_ep)

    # ---- observation
    names = {id(p): n.removeprefix("module.") for n, p in student.named_parameters()}
    steps: list[dict] = [{} for _ in range(args.epochs * niter_per_ep)]
    current = {"it": 0}
    checksums: dict[str, dict] = {}

    def loss_hook(module, inputs, output):
        student_output, teacher_output, epoch = inputs
        it = current["it"]
        steps[it].update({
            "step": it, "epoch": int(epoch), "loss": output.detach().item(),
            "teacher_temp": float(module.teacher_temp_schedule[epoch]),
            "center_norm": float(module.center.norm()),  # after update_center, which forward ends with
            "student_output": pair(student_output), "teacher_output": pair(teacher_output),
        })

    dino_loss.register_forward_hook(loss_hook)
    clip_gradients = O.record_gradients(utils, optimizer, lambda: steps[current["it"]], names)

    def snapshot() -> dict:
        s = dict(student.module.named_parameters())
        t = dict(teacher_without_ddp.named_parameters())
        return {"student": {n: pair(s[n]) for n in STUDENT_TENSORS},
                "teacher": {n: pair(t[n]) for n in TEACHER_TENSORS},
                "center": pair(dino_loss.center)}

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
            main_dino.train_one_epoch(student, teacher, teacher_without_ddp, dino_loss,
                                      Loader(epoch, batches, after_step), optimizer, lr_schedule, wd_schedule,
                                      momentum_schedule, epoch, fp16_scaler, args)
    finally:
        utils.clip_gradients = clip_gradients
    assert current["it"] == args.epochs * niter_per_ep
    return {
        "crops": args.local_crops_number + 2,
        "param_groups": [sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups],
        "schedules": {"lr": lr_schedule.tolist(), "weight_decay": wd_schedule.tolist(),
                      "momentum": momentum_schedule.tolist(),
                      "teacher_temp_per_epoch": dino_loss.teacher_temp_schedule.tolist()},
        "steps": steps,
        "checksums": checksums,
    }


# ------------------------------------------------------------------------------------------------------- main
def main() -> None:
    cli = O.command_line(__doc__.split("\n\n")[0], "facebookresearch/dino",
                         HERE / "fixtures" / "dino_official.json").parse_args()
    repo = cli.official.resolve()
    torch.set_num_threads(cli.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.cuda.amp.autocast, nn.utils.weight_norm
    started = time.time()

    spec = V.make_spec(VIEW_SEED)
    images, _ = V.load_train_images(cli.data_root)
    all_crops = [V.render(spec, step, images) for step in range(V.STEPS)]
    weights = W.initial_weights(WEIGHT_SEED)
    torch.set_default_dtype(torch.float64)

    fixture: dict = {
        "about": "Reference trajectory of the official DINO training step, tiny, CPU, float64: "
                 "tests/parity/make_dino.py (see tests/parity/README.md).",
        "official": {"repository": "facebookresearch/dino", "commit": O.commit_of(repo)},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "numpy": np.__version__, "timm": importlib.import_module("timm").__version__,
                        "torchvision": importlib.import_module("torchvision").__version__,
                        "torch_threads": torch.get_num_threads()},
        "settings": {
            "steps_per_epoch": STEPS_PER_EPOCH, "epochs": EPOCHS, "dtype": "float64",
            "view_seed": VIEW_SEED, "weight_seed": WEIGHT_SEED, "checksum_steps": list(CHECKSUM_STEPS),
            "checksums": "[sum, sum of squares] in float64; checksums[k] is the state after step k "
                         "(optimizer step and teacher EMA done), 'initial' before step 0",
            "model": {"timm_model": W.TIMM_MODEL, "timm_args": W.TIMM_ARGS, "mlp_ratio": W.MLP_RATIO,
                      "qkv_bias": True, "layernorm_eps": 1e-6,
                      "head": {"in_dim": W.EMBED, "hidden_dim": W.HIDDEN, "bottleneck_dim": W.BOTTLENECK,
                               "out_dim": W.OUT_DIM, "nlayers": W.HEAD_LAYERS, "use_bn": False,
                               "norm_last_layer": True}},
        },
        "views": {**V.spec_to_json(spec),
                  "crop_checksums": [[pair(c) for c in crops] for crops in all_crops]},
        "initial_weights": {name: pair(t) for name, t in weights.items()},
    }

    real_list = torch.hub.list
    with tempfile.TemporaryDirectory(prefix="clrun-parity-") as tmp, O.official(repo):
        torch.hub.list = lambda *a, **k: []  # get_args_parser lists XCiT's hub models (a download)
        try:
            main_dino = importlib.import_module("main_dino")
            utils = importlib.import_module("utils")
            vits = importlib.import_module("vision_transformer")
            official_parser = argparse.ArgumentParser("DINO", parents=[main_dino.get_args_parser()])
        finally:
            torch.hub.list = real_list
        main_dino.torch = O.Proxy(torch, cuda=O.Proxy(torch.cuda, synchronize=lambda device=None: None))
        utils.MetricLogger.synchronize_between_processes = lambda self: None
        one_process_group(tmp)

        fixture["vit_equivalence"] = W.compare_with_official(vits, weights, {
            "step0_global_crop_1": all_crops[0][0], "step0_local_crop_1": all_crops[0][2]})
        fixture["official"]["flags"] = {}
        fixture["runs"] = {}
        for variant, local_crops in (("multicrop", V.LOCAL_CROPS), ("global_only", 0)):
            command = flags(local_crops, tmp)
            args = official_parser.parse_args(command)
            fixture["official"]["flags"][variant] = [f if f != tmp else "(temporary folder)" for f in command]
            batches = [crops[: 2 + local_crops] for crops in all_crops]
            log = io.StringIO()
            with contextlib.redirect_stdout(sys.stdout if cli.verbose else log):
                fixture["runs"][variant] = run(main_dino, utils, vits, args, weights, batches)
        dist.destroy_process_group()

    size = O.write_fixture(cli.out, fixture)
    print(f"wrote {cli.out} ({size / 1024:.1f} kB) in {time.time() - started:.1f} s; official commit "
          f"{fixture['official']['commit']}")
    for name, value in fixture["vit_equivalence"].items():
        print(f"  official vs timm ViT, {name}: max |diff| {value['max_abs_diff']:.3g}")
    for variant, result in fixture["runs"].items():
        losses = [s["loss"] for s in result["steps"]]
        print(f"  {variant}: losses {losses[:3]} ... {losses[-3:]}")


if __name__ == "__main__":
    main()
