"""Run by ``torchrun --standalone --nproc_per_node=2 tests/helpers/matrix_worker.py OUT STRATEGY`` from
tests/distributed/test_matrix.py: every shipped method (the ``*_fmnist`` recipes and the quickstart's SimCLR)
trained a few steps under ``train.strategy: STRATEGY`` (ddp or fsdp), through cl-run's own setup (``prepare``:
the DDP wrapper or FSDP2's sharding) and its own training step (``Step``), against one process's reference.

Each recipe is cut to a tiny size that keeps its method: its loss and the loss's state, its target network, its
views (multi-crop included), its masks and hidden-patch treatment, its token head, predictor and parameter
groups (DINO's and iBOT's frozen prototypes, MoCo v3's frozen patch embedding); a small backbone of the same
kind (timm's ``test_resnet`` for the ResNets, a 2-block ViT of width 16 with the recipe's patch size), narrow
heads, short queues, batch 8 (4 per process), SGD without momentum, no scheduler, no callbacks.

The reference (computed first, before the process group exists, identically on every rank) is one process on
the whole batch in which each rank's share is its own BatchNorm batch: the plain network (built from the same
seed) runs on each share separately, its outputs are concatenated and the loss reads them all, as one process
with per-rank BatchNorm statistics would (BatchNorm statistics are per rank under DDP; SyncBatchNorm has no CPU
kernel). The target network does the same. Views and masks are random: they are drawn once per step for the
whole batch from a seeded stream and fed to both computations, each rank taking its rows; nothing else in these
recipes draws per rank (no drop-path, no dropout).

Compared after every step: the gradients (each rank's, gathered whole from its shards under FSDP), and after
the last one every weight of the online and the target network (BatchNorm running statistics left out: they
are per rank by design) and the loss's state (queues, centers, prototypes). Each case records, per tensor, the
largest absolute difference and its share of the tolerance (``tolerance``: relative, and a share of the
largest value of its group); a case that raised records its error. Under DDP one case more, ``CONTROL``, that
must fail: the comparison sees BatchNorm statistics taken over the whole batch. Under FSDP one case more,
``ibot (fsdp bf16)``: iBOT with ``train.fsdp_param_dtype: bf16`` and ``train.fsdp_reduce_dtype: fp32``, which
must compute in bf16 (hooks record the dtype of a block's weights and inputs inside forward) and keep fp32
shards, gradients and optimizer state. Under both, ``SPLIT_CASES``: each process's share in two parts
(gradient caching, accumulation), against one process whose BatchNorm batches are those parts.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

import clrun
from clrun import distributed
from clrun.masks import Masks
from clrun.tokens import Tokens
from clrun.training.model.branch import Branch
from clrun.training.model.network import detached
from clrun.training.model.outputs import StepOutputs
from clrun.training.run import Run
from clrun.training.setup import prepare
from clrun.training.step import Step

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
BATCH, STEPS = 8, 2  # the global batch (each of 2 processes takes 4); optimizer steps compared
BF16 = "ibot (fsdp bf16)"
# A control the comparison must fail: the DDP run of SimCLR against a reference with one BatchNorm batch.
CONTROL = "simclr against one BatchNorm batch"


def tolerance(group: str) -> tuple[float, float]:
    """(rtol, atol as a share of the group's largest value). The first step's gradients: float32 rounding of
    differently ordered sums; later steps' gradients also carry the first update's rounding in their weights,
    amplified by the network (up to 4e-5 of the largest gradient seen, LeJEPA's); the final state, 1e-5."""
    return (1e-4, 1e-4) if group.startswith("step") and not group.startswith("step 0") else (1e-5, 1e-5)

# Every run: tiny data (8 images: one step per epoch, so DINO's and iBOT's prototypes are frozen in step 0 and
# train in step 1), plain SGD, nothing but the training step.
COMMON = ["data.dataset.subset=8", f"data.batch_size={BATCH}", "data.num_workers=0", "train.epochs=2",
          "train.channels_last=false", "train.progress=false", "train.precision=fp32", "callbacks=[]",
          "health.enabled=false", 'optimizer={"name": "torch/SGD", "lr": 0.1}', "scheduler=null"]
RESNET = ["backbone.name=timm/test_resnet"]
VIT = ["backbone.model_args.embed_dim=16", "backbone.model_args.depth=2", "backbone.model_args.num_heads=2"]
MLP = ["projector.hidden_dim=32", "projector.out_dim=16"]
PREDICTOR = ["predictor.hidden_dim=32"]
DINO_HEAD = ["projector.out_dim=32", "projector.hidden_dim=32", "projector.bottleneck_dim=16"]
TOKEN_HEAD = ["masking.head.embed_dim=16", "masking.head.depth=1", "masking.head.num_heads=2"]

# The 16 shipped methods and the Gram term: case name -> (recipe, overrides that make it tiny).
CASES: dict[str, tuple[str, list[str]]] = {
    "simclr": ("quickstart", RESNET + MLP),
    "barlow_twins": ("barlow_twins_fmnist", RESNET + MLP),
    "byol": ("byol_fmnist", RESNET + MLP + PREDICTOR),
    "dcl": ("dcl_fmnist", RESNET + MLP),
    "dclw": ("dclw_fmnist", RESNET + MLP),
    "dino": ("dino_fmnist", VIT + DINO_HEAD),
    "ibot": ("ibot_fmnist", VIT + DINO_HEAD),
    "ijepa": ("ijepa_fmnist", VIT + TOKEN_HEAD),
    "lejepa": ("lejepa_fmnist", VIT + MLP),
    "mae": ("mae_fmnist", VIT + TOKEN_HEAD),
    "mocov2": ("mocov2_fmnist", RESNET + MLP + ["loss.queue_size=32"]),
    "mocov3": ("mocov3_fmnist", VIT + MLP + PREDICTOR + ["predictor.out_dim=16"]),
    "nnclr": ("nnclr_fmnist", RESNET + MLP + PREDICTOR + ["loss.queue_size=32"]),
    "simsiam": ("simsiam_fmnist", RESNET + MLP + PREDICTOR),
    # Prototypes frozen in step 0 (SwAV's freeze), trained in step 1.
    "swav": ("swav_fmnist", RESNET + MLP + ["loss.num_prototypes=10", "loss.freeze_prototypes_steps=1"]),
    "vicreg": ("vicreg_fmnist", RESNET + MLP),
    # DINOv3's Gram anchoring on iBOT: the target's snapshot refreshed after step 1 (a copy between shards under
    # FSDP), its tokens on views twice as large, resized to the student's grid.
    "ibot + gram": ("ibot_fmnist", VIT + DINO_HEAD + [
        "loss={name: clrun/gram_anchoring, weight: 1.0, loss: {name: clrun/ibot}}",
        "target.snapshot={every: 1, scale: 2.0}"]),
}
# Cases computed in float64 (torch's default dtype around the case, both sides): NNCLR's nearest neighbour is an
# argmax over the queue, and at step 1 the queue holds step 0's projections of an untrained network, nearly equal:
# in float32 the reference's and the ranks' rounding may pick different neighbours (seen on an AVX-512 CPU: the
# step-1 gradients 44x the tolerance apart), in float64 they agree.
FLOAT64 = frozenset({"nnclr"})


@contextmanager
def dtype_of(case: str) -> Iterator[None]:
    method = SPLIT_CASES[case][0] if case in SPLIT_CASES else case
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if method in FLOAT64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# A batch in parts under each strategy: case -> (method, setting, BatchNorm batches per process of the online
# network, of the target network). Each process's share in 2 parts: the online network's BatchNorm batches are
# those parts (quarters of the batch); a cached step's target network sees the process's whole share at once,
# an accumulated one's each micro-batch. The reference: the method's whole batch in that many BatchNorm batches.
SPLIT_CASES: dict[str, tuple[str, str, int, int]] = {
    "simclr (grad_cache_chunks=2)": ("simclr", "train.grad_cache_chunks=2", 2, 1),
    "ibot (grad_cache_chunks=2)": ("ibot", "train.grad_cache_chunks=2", 2, 1),
    "byol (accumulate_steps=2)": ("byol", "train.accumulate_steps=2", 2, 2),
}
# bf16 compute, fp32 reductions; AdamW, so that there is optimizer state to find in fp32.
MIXED = ["train.fsdp_param_dtype=bf16", "train.fsdp_reduce_dtype=fp32", 'optimizer={"name": "torch/AdamW", "lr": 1.0e-3}']


def recipe_of(case: str, strategy: str, extra: tuple[str, ...] = ()) -> clrun.Recipe:
    stem, tiny = CASES[case]
    return clrun.load_recipe(RECIPES / f"{stem}.yaml", [*COMMON, *tiny, f"train.strategy={strategy}", *extra])


def rows_of(rank: int, world: int) -> slice:
    share = BATCH // world
    return slice(rank * share, (rank + 1) * share)


def masks_rows(masks: Optional[list[Optional[Masks]]], rows: slice) -> Optional[list[Optional[Masks]]]:
    if masks is None:
        return None
    # dataclasses.replace keeps the generator's counts (the step gathers by them, without a host read).
    return [None if m is None else replace(m, visible=m.visible[rows], targets=m.targets[rows]) for m in masks]


def concatenated(pieces: list[Any]) -> Any:
    """One rank's outputs after another's, as one batch (row ``n`` of every tensor is image ``n``)."""
    first = pieces[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(pieces)
    if isinstance(first, Tokens):
        return Tokens(torch.cat([t.prefix for t in pieces]), torch.cat([t.patches for t in pieces]), first.grid,
                      torch.cat([t.pooled for t in pieces]))
    if isinstance(first, (list, tuple)):
        return [concatenated(list(column)) for column in zip(*pieces)]
    if isinstance(first, Branch):
        return Branch(**{name: concatenated([b.get(name) for b in pieces]) for name, _ in first.items()})
    raise TypeError(f"cannot concatenate {type(first).__name__}")


class PerRankBatchNorm(nn.Module):
    """The reference's trainable: ``trainable``'s network on each rank's rows as its own batch (BatchNorm
    statistics per share, as under DDP), the loss on all rows at once (one process)."""

    def __init__(self, trainable: nn.Module, world: int) -> None:
        super().__init__()
        self.inner, self.world = trainable, world

    def forward(self, views, is_global, target, step, total_steps, masks=None, drop=False, wants=frozenset()):
        shares = [rows_of(r, self.world) for r in range(self.world)]
        online = concatenated([self.inner.network([v[rows] for v in views], masks_rows(masks, rows), drop, wants)
                               for rows in shares])
        out = StepOutputs(views, is_global, masks, online, target if target is not None else Branch(), step, total_steps)
        return self.inner.loss_fn(out), detached(out)


class PerRankTarget(nn.Module):
    """The reference's target network: each rank's rows as its own batch, concatenated; updated as the target."""

    def __init__(self, target: nn.Module, world: int) -> None:
        super().__init__()
        self.inner, self.world = target, world

    @property
    def momentum_value(self) -> float:
        return self.inner.momentum_value

    def update(self, online: nn.Module, healthy: Optional[Tensor] = None) -> None:
        self.inner.update(online, healthy)

    def forward(self, views: list[Tensor], wants=frozenset()) -> Branch:
        return concatenated([self.inner([v[rows_of(r, self.world)] for v in views], wants) for r in range(self.world)])


class FixedViews(nn.Module):
    """Stands for the run's views: returns the rows of ``current`` (this step's views, drawn beforehand) that the
    images name (image ``n`` holds the number ``n``), so a step that splits its batch gets each part's rows."""

    def __init__(self, views: nn.Module) -> None:
        super().__init__()
        self.is_global, self.current = list(views.is_global), []

    def forward(self, images: Tensor, places: Optional[Tensor] = None) -> list[Tensor]:
        rows = images[:, 0, 0, 0].long()
        return [v[rows] for v in self.current]


class FixedMasking:
    """Stands for the run's masking: ``current`` (this step's masks, drawn beforehand)."""

    def __init__(self, masking) -> None:
        self.drop, self.current = masking.drop, None

    def draw(self, backbone, views, is_global):
        return self.current


def whole(tensor: Tensor) -> Tensor:
    """``tensor`` whole (a sharded DTensor gathered: a collective), detached, in fp32, on the CPU."""
    if callable(getattr(tensor, "full_tensor", None)):
        tensor = tensor.full_tensor()
    return tensor.detach().float().cpu().clone()


def gradients(parts) -> dict[str, Tensor]:
    named = [*(("network." + k, p) for k, p in parts.network.named_parameters()),
             *(("loss." + k, p) for k, p in parts.loss_fn.named_parameters())]
    return {k: whole(p.grad) for k, p in named if p.grad is not None}


def state(module: Optional[nn.Module], sharded: bool) -> dict[str, Tensor]:
    """``module``'s parameters and buffers, whole (a collective when sharded)."""
    if module is None:
        return {}
    if sharded and any(hasattr(p, "full_tensor") for p in module.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return {k: whole(v) for k, v in get_model_state_dict(module, options=StateDictOptions(full_state_dict=True)).items()}
    return {k: whole(v) for k, v in module.state_dict().items()}


PER_RANK_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def final_state(parts, sharded: bool) -> dict[str, Tensor]:
    """The online and target network's weights (without BatchNorm's per-rank statistics) and the loss's state."""
    target = parts.target.inner if isinstance(parts.target, PerRankTarget) else parts.target
    out = {f"network.{k}": v for k, v in state(parts.network, sharded).items()}
    out.update({f"target.{k}": v for k, v in state(target, sharded).items()})
    out = {k: v for k, v in out.items() if not k.endswith(PER_RANK_BUFFERS)}
    out.update({f"loss.{k}": v for k, v in state(parts.loss_fn, sharded).items()})
    return out


def train(setup, inputs: list[tuple[list[Tensor], Any]], rows: slice, per_rank: int = 0,
          target_per_rank: int = 0) -> dict[str, Any]:
    """STEPS steps of ``Step`` on ``setup``'s parts, with ``inputs`` (each step's views and masks) cut to
    ``rows``; ``per_rank``: the reference, the whole batch in that many BatchNorm batches (the target network's
    in ``target_per_rank``, by default as many)."""
    parts = setup.parts
    views = FixedViews(parts.views)
    masking = FixedMasking(parts.masking) if parts.masking is not None else None
    swapped = {"views": views, "masking": masking}
    if per_rank:
        swapped["trainable"] = PerRankBatchNorm(parts.trainable, per_rank)
        if parts.target is not None:
            swapped["target"] = PerRankTarget(parts.target, target_per_rank or per_rank)
    parts = replace(parts, **swapped)
    run = Run(recipe=setup.recipe, parts=parts, device=setup.device, folder=None,
              steps_per_epoch=setup.steps_per_epoch)
    step = Step.of(run)
    record: dict[str, Any] = {"grads": [], "losses": []}
    images = torch.arange(rows.stop - rows.start, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 28, 28)  # row numbers
    for index, (step_views, step_masks) in enumerate(inputs):
        views.current = [v[rows] for v in step_views]
        if masking is not None:
            masking.current = masks_rows(step_masks, rows)
        run.step = index
        step_record, _ = step(images)
        record["losses"].append(step_record.values[0].item())  # the loss, averaged over ranks
        record["grads"].append(gradients(parts))
    record["state"] = final_state(parts, setup.parts.whole_template is not None)
    return record


def draw_inputs(setup) -> list[tuple[list[Tensor], Any]]:
    """Each step's views of BATCH training images and their masks, for the whole batch, from a seeded stream."""
    parts = setup.parts
    images = torch.stack([setup.dataset[i][0] for i in range(BATCH)])
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    inputs = []
    for _ in range(STEPS):
        views = parts.views(images)
        masks = parts.masking.draw(parts.network.backbone, views, parts.views.is_global) if parts.masking else None
        inputs.append((views, masks))
    torch.random.set_rng_state(generator_state)
    return inputs


def compare(got: dict[str, Tensor], expected: dict[str, Tensor], group: str, report: dict) -> None:
    """Per tensor: the largest absolute difference and its share of the tolerance (<= 1 passes)."""
    # A parameter that no loss term reaches has no gradient in one process and under DDP; FSDP2 gives one of
    # zeros to every parameter of a unit that took a backward (MAE's and I-JEPA's pooling norm). The same update.
    got = {k: v for k, v in got.items() if k in expected or bool(v.any())}
    if got.keys() != expected.keys():
        report["problems"].append(f"{group}: tensors differ: only distributed {sorted(got.keys() - expected.keys())}, "
                                  f"only reference {sorted(expected.keys() - got.keys())}")
    scale = max((v.abs().max().item() for v in expected.values() if v.numel()), default=0.0)
    rtol, atol = tolerance(group)
    for key in sorted(got.keys() & expected.keys()):
        a, b = got[key], expected[key]
        if a.shape != b.shape:
            report["problems"].append(f"{group} {key}: shape {tuple(a.shape)} against {tuple(b.shape)}")
            continue
        if not a.numel():
            continue
        diff = (a - b).abs()
        ratio = (diff / (atol * scale + rtol * b.abs() + 1e-30)).max().item()
        entry = {"max_abs": diff.max().item(), "ratio": ratio, "rel": diff.max().item() / (scale + 1e-30)}
        report["tensors"][f"{group} {key}"] = entry


def summary(report: dict) -> dict:
    tensors = report["tensors"]
    worst = max(tensors, key=lambda k: tensors[k]["ratio"], default=None)
    groups: dict[str, dict] = {}
    for key, entry in tensors.items():
        group = key.split(" network.")[0].split(" target.")[0].split(" loss.")[0]
        best = groups.setdefault(group, {"max_abs": 0.0, "ratio": 0.0, "worst": None, "tensors": 0, "rel": 0.0})
        best["tensors"] += 1
        best["max_abs"] = max(best["max_abs"], entry["max_abs"])
        best["rel"] = max(best["rel"], entry["rel"])
        if entry["ratio"] >= best["ratio"]:
            best["ratio"], best["worst"] = entry["ratio"], key
    return {"max_abs": max((t["max_abs"] for t in tensors.values()), default=0.0),
            "ratio": tensors[worst]["ratio"] if worst else 0.0, "worst": worst, "tensors": len(tensors),
            "groups": groups, "problems": report["problems"], "losses": report.get("losses"), "placed": report.get("placed"),
            "error": report.get("error")}


def placed(setup) -> str:
    """How the run's parts were placed: "ddp" (DistributedDataParallel), "fsdp" (sharded parameters) or "plain"."""
    parts = setup.parts
    if isinstance(parts.trainable, nn.parallel.DistributedDataParallel):
        return "ddp"
    if parts.whole_template is not None and any(hasattr(p, "full_tensor") for p in parts.network.parameters()):
        return "fsdp"
    return "plain"


def bf16_case(world: int, reference: dict) -> dict:
    """iBOT under FSDP with bf16 parameters: the dtypes seen inside forward, of the shards, gradients and the
    optimizer's state, and how close the first step's gradients come to fp32's."""
    rank = distributed.rank()
    setup = prepare(recipe_of("ibot", "fsdp", tuple(MIXED)), "train", torch.device("cpu"))
    seen: dict[str, str] = {}

    def record(name: str):
        def hook(module, args):
            weight = next(module.parameters(recurse=False))
            seen.setdefault(f"{name} weight", str(weight.dtype))
            seen.setdefault(f"{name} input", str(args[0].dtype))
        return hook

    backbone = setup.parts.network.backbone
    handles = [backbone.blocks[0].attn.qkv.register_forward_pre_hook(record("block qkv")),
               backbone.patch_embed.proj.register_forward_pre_hook(record("patch_embed"))]
    for name, module in setup.parts.network.projector.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(record(f"projector BatchNorm")))
            break
    result = train(setup, reference["inputs"], rows_of(rank, world))
    for handle in handles:
        handle.remove()
    parts = setup.parts
    shards = sorted({str(p.to_local().dtype) if hasattr(p, "to_local") else str(p.dtype)
                     for p in [*parts.network.parameters(), *parts.target.parameters()]})
    grads = sorted({str(p.grad.dtype) for p in parts.network.parameters() if p.grad is not None})
    moments = sorted({str(v.to_local().dtype if hasattr(v, "to_local") else v.dtype)
                      for s in parts.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim})
    got, expected = result["grads"][0], reference["grads"][0]
    flat_got = torch.cat([got[k].flatten() for k in sorted(expected) if k in got])
    flat_expected = torch.cat([expected[k].flatten() for k in sorted(expected) if k in got])
    cosine = torch.nn.functional.cosine_similarity(flat_got, flat_expected, dim=0).item()
    return {"seen": seen, "shards": shards, "grads": grads, "optimizer_state": moments, "grad_cosine": cosine,
            "losses": result["losses"], "reference_losses": reference["losses"],
            "missing_grads": sorted(set(expected) - set(got))}


def main(out: str, strategy: str) -> None:
    # The references first, before the process group exists: with a group running, the losses would gather
    # across ranks, and prepare would wrap or shard.
    import os

    world = int(os.environ["WORLD_SIZE"])
    timings: dict[str, float] = {}
    references: dict[str, dict] = {}
    for case in CASES:
        began = time.perf_counter()
        try:
            with dtype_of(case):
                setup = prepare(recipe_of(case, strategy), "train", torch.device("cpu"))
                inputs = draw_inputs(setup)
                references[case] = {**train(setup, inputs, slice(0, BATCH), per_rank=world), "inputs": inputs}
            if case == "simclr" and strategy == "ddp":
                setup = prepare(recipe_of(case, strategy), "train", torch.device("cpu"))
                references[CONTROL] = train(setup, inputs, slice(0, BATCH), per_rank=1)
        except Exception:
            references[case] = {"error": traceback.format_exc()}
        timings[f"{case} reference"] = time.perf_counter() - began
    for case, (method, _, online_batches, target_batches) in SPLIT_CASES.items():
        began = time.perf_counter()
        try:
            if "error" in references[method]:
                raise RuntimeError(f"the reference of {method} failed")
            inputs = references[method]["inputs"]
            setup = prepare(recipe_of(method, strategy), "train", torch.device("cpu"))
            references[case] = {**train(setup, inputs, slice(0, BATCH), per_rank=world * online_batches,
                                        target_per_rank=world * target_batches), "inputs": inputs}
        except Exception:
            references[case] = {"error": traceback.format_exc()}
        timings[f"{case} reference"] = time.perf_counter() - began
    distributed.start("cpu")
    rank = distributed.rank()
    results: dict[str, dict] = {}
    for case in [*CASES, *SPLIT_CASES]:
        began = time.perf_counter()
        reference = references[case]
        method, extra = (case, ()) if case in CASES else (SPLIT_CASES[case][0], (SPLIT_CASES[case][1],))
        report: dict[str, Any] = {"tensors": {}, "problems": []}
        try:
            if "error" in reference:
                raise RuntimeError(f"the reference failed:\n{reference['error']}")
            with dtype_of(case):
                setup = prepare(recipe_of(method, strategy, extra), "train", torch.device("cpu"))
                report["placed"] = placed(setup)
                got = train(setup, reference["inputs"], rows_of(rank, world))
            for against, name in ((reference, case), (references.get(CONTROL), CONTROL)):
                if name == CONTROL and (case != "simclr" or against is None):
                    continue
                checked: dict[str, Any] = {"tensors": {}, "problems": [], "placed": report["placed"]} if name == CONTROL else report
                for index in range(STEPS):
                    compare(got["grads"][index], against["grads"][index], f"step {index} gradient", checked)
                compare(got["state"], against["state"], "final", checked)
                checked["losses"] = {"distributed": got["losses"], "reference": against["losses"]}
                if name == CONTROL:
                    results[CONTROL] = summary(checked)
        except Exception:
            report["error"] = traceback.format_exc()
        results[case] = summary(report)
        timings[case] = time.perf_counter() - began
    if strategy == "fsdp":
        began = time.perf_counter()
        try:
            results[BF16] = bf16_case(world, references["ibot"])
        except Exception:
            results[BF16] = {"error": traceback.format_exc()}
        timings[BF16] = time.perf_counter() - began
    Path(out, f"rank{rank}.json").write_text(json.dumps({"results": results, "timings": timings}, indent=1))
    distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    distributed.exit_process(0)  # without the interpreter's finalization: see clrun.distributed.exit_process
