"""Run by ``torchrun --nproc_per_node=2 tests/helpers/ddp_worker.py OUT`` from tests/distributed/test_distributed.py.

For every loss (the token-level ones on a small ViT), each rank trains a copy of the same small network for a few steps twice: once alone on
the whole batch (the reference a single process computes), and once under DistributedDataParallel on
its half of the batch, through cl-run's own step pieces (Trainable, data_parallel, the losses' cross-rank
code, the averaged metrics). It saves both so the test can compare gradients, losses and queues.
The token-level losses train a third time, sharded (``train.strategy: fsdp``: cl-run's own sharding of
the online network, the target's copies and the loss), with the whole weights gathered after the steps:
the backbone's ``forward_tokens`` and the token heads must train as under DDP.
The networks have no BatchNorm: BatchNorm statistics are per rank by design, so only BatchNorm-free
networks have exactly the single-process gradients.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from unittest import mock

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import clrun
from clrun import distributed
from clrun.recipe.schema import TargetSection
from clrun.training.model.network import OnlineNetwork
from clrun.training.step import split_loss, step_values
from clrun.training.model.target import TargetNetwork
from clrun.training.model.network import Trainable
from clrun.training.parallel.parallelize import data_parallel
from clrun.training.model.reads import branch_wants, declared, vocabulary
from clrun.training.parallel import sharding

GLOBAL_BATCH, IN_DIM, DIM, STEPS = 8, 12, 8, 3

# name -> (loss parameters, has a predictor, has a momentum target, number of views (the last local));
# a name's first word is the loss's component name, the rest tells two settings of one loss apart.
CASES = {
    "clrun/ntxent": ({"temperature": 0.3}, False, False, 2),
    "clrun/moco": ({"queue_size": 40, "temperature": 0.2}, False, True, 2),
    "clrun/byol": ({}, True, True, 3),
    "clrun/simsiam": ({}, True, False, 3),
    "clrun/swav": ({"num_prototypes": 6, "freeze_prototypes_steps": 0, "temperature": 0.1}, False, False, 3),
    "clrun/barlow_twins": ({"lambd": 0.01}, False, False, 2),
    "clrun/vicreg": ({}, False, False, 2),
    "clrun/dino": ({"teacher_temperature": 0.05, "center_momentum": 0.8}, False, True, 3),
    "clrun/dino (DINOv2: Sinkhorn-Knopp, KoLeo)": (
        {"teacher_temperature": 0.5, "centering": "sinkhorn", "koleo_weight": 0.5}, False, True, 3),
    "clrun/mocov3": ({"temperature": 0.2}, True, True, 3),
    "clrun/nnclr": ({"queue_size": 20, "temperature": 0.1}, True, False, 3),
    "clrun/dcl": ({"temperature": 0.2}, False, False, 2),
    "clrun/dclw": ({"temperature": 0.2, "weight_sigma": 0.5}, False, False, 2),
    "clrun/lejepa": ({"lambd": 0.5, "num_slices": 16}, False, False, 3),
}

# The token-level losses, on a one-block ViT (LayerNorm only) with masks drawn for the whole batch and
# split by rank: name -> (loss parameters, mask generator and its settings, hidden, masking settings:
# a token head or none, has a momentum target).
TOKEN_CASES = {
    "clrun/mae": ({}, ("clrun/random_mask", {}), "drop",
                  {"head": ("clrun/mae_decoder", {"embed_dim": 8, "depth": 1, "num_heads": 2})}, False),
    "clrun/ijepa": ({}, ("clrun/multiblock_mask", {"min_keep": 2}), "drop",
                    {"head": ("clrun/jepa_predictor", {"embed_dim": 8, "depth": 1, "num_heads": 2})}, True),
    "clrun/ibot": ({"teacher_temperature": 0.05, "center_momentum": 0.8, "patch_center_momentum": 0.7},
                   ("clrun/block_mask", {}), "mask_token", {}, True),
}
IMAGE, PATCH = 16, 4  # 16 x 16 one-channel images: a 4 x 4 patch grid

# A known bug the comparison must catch: SIGReg's characteristic function averaged over ranks with only
# this rank's gradient (LightlySSL's before its #1923), each rank's gradient 1/world_size too small.
BROKEN = "clrun/lejepa with a local-gradient average"


def local_gradient_average(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks in the forward pass; in the backward pass only this rank's share of it."""
    others = distributed.all_reduce_sum(tensor.detach()) - tensor.detach()
    return (tensor + others) / distributed.world_size()


def network(with_predictor: bool) -> OnlineNetwork:
    torch.manual_seed(0)  # every rank and both runs start from the same weights
    backbone = nn.Sequential(nn.Linear(IN_DIM, 16), nn.ReLU())
    projector = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, DIM))
    predictor = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, DIM)) if with_predictor else None
    return OnlineNetwork(backbone, projector, predictor)


def batches(views: int) -> list[list[torch.Tensor]]:
    """STEPS batches of ``views`` views of GLOBAL_BATCH samples; the same on every rank."""
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(GLOBAL_BATCH, IN_DIM, generator=g) for _ in range(views)]
            for _ in range(STEPS)]


def step_on(result, trainable: Trainable, optimizer: torch.optim.Optimizer, target, wrap: bool, record: dict) -> None:
    """One SGD step on what the (wrapped) trainable returned; ``record``: each step's loss (averaged over
    ranks when wrapped) and the first step's gradients."""
    loss, extras = split_loss(result[0])
    record["losses"].append(step_values(loss, extras)[1][0].item() if wrap else float(loss.detach()))
    optimizer.zero_grad()
    loss.backward()
    if record["grads"] is None:  # a sharded parameter's gradient whole (a collective, in the same order on every rank)
        record["grads"] = {k: whole(p.grad) for k, p in trainable.named_parameters() if p.grad is not None}
    optimizer.step()
    sharding.reshard(trainable)  # as the training step does: a part the loss left out is gathered no longer
    if target is not None:
        target.update(trainable.network)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor``, gathered whole from every rank's shard when it is sharded (a DTensor)."""
    return tensor.full_tensor() if callable(getattr(tensor, "full_tensor", None)) else tensor.clone()


def whole_weights(net: nn.Module, target, sharded: bool) -> dict:
    """The online and the target network's tensors, whole (gathered when ``sharded``: a collective)."""
    def state(module: nn.Module) -> dict:
        if sharded:
            return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
        return {k: v.clone() for k, v in module.state_dict().items()}
    weights = {f"network.{k}": v for k, v in state(net).items()}
    if target is not None:
        weights.update({f"target.{k}": v for k, v in state(target).items()})
    return weights


def token_network(name: str) -> OnlineNetwork:
    _, _, hidden, masking, _ = TOKEN_CASES[name]
    torch.manual_seed(0)
    backbone = clrun.create("backbone", "timm/vit_tiny_patch16_224", in_chans=1, img_size=IMAGE,
                            mask_token=hidden == "mask_token",
                            model_args={"patch_size": PATCH, "embed_dim": 16, "depth": 1, "num_heads": 2})
    projector = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, DIM))
    head = None
    if "head" in masking:
        head_name, settings = masking["head"]
        head = clrun.create("token_head", head_name, token_dim=16, patch_pixels=PATCH * PATCH, **settings)
    return OnlineNetwork(backbone, projector, None, head)


def train_tokens(name: str, rows: slice, wrap: bool, shard: bool = False) -> dict:
    """``train`` for a token-level loss: two global views of images, their masks drawn for the whole batch
    from a seeded stream (the same on every rank) and cut to ``rows``; with ``shard``, the parts sharded as
    ``train.strategy: fsdp`` shards them. Also returns the whole weights after the last step."""
    params, (mask_name, mask_settings), hidden, masking, with_target = TOKEN_CASES[name]
    net = token_network(name)
    loss_fn = clrun.create("loss", name, in_dim=DIM, **params)
    generator = clrun.create("mask", mask_name, **mask_settings)
    target = TargetNetwork(net, TargetSection(momentum=0.9), STEPS) if with_target else None
    if shard:  # before the optimizer, as clrun.training.parallel.parallelize does; FSDP2 then needs no DDP wrapper
        sharding.shard_training(net, target, loss_fn, torch.device("cpu"))
    trainable = Trainable(net, loss_fn)
    model = data_parallel(trainable, torch.device("cpu")) if wrap and not shard else trainable
    optimizer = torch.optim.SGD(trainable.parameters(), lr=0.1)
    reads = declared(loss_fn) or frozenset(vocabulary())  # what cl-run's build gives the networks to make
    g = torch.Generator().manual_seed(1)
    record = {"grads": None, "losses": []}
    for step in range(STEPS):
        views = [torch.randn(GLOBAL_BATCH, 1, IMAGE, IMAGE, generator=g)[rows] for _ in range(2)]
        torch.manual_seed(100 + step)
        drawn = [generator(GLOBAL_BATCH, (IMAGE // PATCH,) * 2, "cpu") for _ in views]
        masks = [dataclasses.replace(m, visible=m.visible[rows], targets=m.targets[rows]) for m in drawn]
        branch = target(views, branch_wants(reads, "target")) if target is not None else None
        step_on(model(views, [True, True], branch, step, STEPS, masks, hidden == "drop", branch_wants(reads, "online")),
                trainable, optimizer, target, wrap, record)
    return {**record, "loss_state": copy.deepcopy(loss_fn.state_dict()), "weights": whole_weights(net, target, shard)}


def train(name: str, rows: slice, wrap: bool) -> dict:
    """STEPS SGD steps on the ``rows`` of every batch; returns the first step's gradients, each
    step's loss (averaged over ranks when wrapped) and the loss's final state."""
    if name in TOKEN_CASES:
        return train_tokens(name, rows, wrap)
    params, with_predictor, with_target, views = CASES[name]
    net = network(with_predictor)
    loss_fn = clrun.create("loss", name.split()[0], in_dim=DIM, **params)
    target = TargetNetwork(net, TargetSection(momentum=0.9), STEPS) if with_target else None
    trainable = Trainable(net, loss_fn)
    model = data_parallel(trainable, torch.device("cpu")) if wrap else trainable
    optimizer = torch.optim.SGD(trainable.parameters(), lr=0.1)
    is_global = [True, True, False][:views]
    record = {"grads": None, "losses": []}
    for step, batch in enumerate(batches(views)):
        x = [v[rows] for v in batch]
        targets = target([v for v, gl in zip(x, is_global) if gl]) if target is not None else None
        step_on(model(x, is_global, targets, step, STEPS), trainable, optimizer, target, wrap, record)
    return {**record, "loss_state": copy.deepcopy(loss_fn.state_dict())}


def main(out: str) -> None:
    # The single-process reference first, before the process group exists: with a group running,
    # the losses would gather across ranks.
    single = {name: train(name, slice(None), wrap=False) for name in [*CASES, *TOKEN_CASES]}
    distributed.start("cpu")
    rank, world = distributed.rank(), distributed.world_size()
    share = GLOBAL_BATCH // world
    rows = slice(rank * share, (rank + 1) * share)
    ddp = {name: train(name, rows, wrap=True) for name in [*CASES, *TOKEN_CASES]}
    sharded = {name: train_tokens(name, rows, wrap=True, shard=True) for name in TOKEN_CASES}
    with mock.patch.object(distributed, "average", local_gradient_average):
        ddp[BROKEN] = train("clrun/lejepa", rows, wrap=True)
    single[BROKEN] = single["clrun/lejepa"]
    torch.save({name: {"single": single[name], "ddp": ddp[name], **({"fsdp": sharded[name]} if name in sharded else {})}
                for name in ddp}, f"{out}/rank{rank}.pt")
    distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1])
    distributed.exit_process(0)  # without the interpreter's finalization: see clrun.distributed.exit_process
