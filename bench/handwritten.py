"""cl-run's SimCLR training step written by hand in plain PyTorch: the baseline of the overhead benchmark.

It reads the recipe as a plain dict (``common.settings``: the recipe with the benchmark's overrides and
cl-run's defaults filled in) so it cannot drift from what cl-run trains, and builds everything itself:
the timm backbone; the projector with ``clrun/mlp``'s layers (Linear, BatchNorm1d, ReLU, Linear); the
recipe's kornia ops with the recipe's parameters, run batched on the device on both views at once;
NT-Xent; the optimizer with the same parameter groups; the same per-step warmup-cosine schedule; the
same DataLoader over the same data set. What cl-run does beyond this (its loss's extra metrics, the run
hooks, the metrics file, its general multi-view code) is what the overhead benchmark measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import kornia.augmentation as K
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler

from common import StepWindow, autocast, dataset, measured, timed_batches


def check_supported(cfg: dict[str, Any]) -> None:
    """The hand-written loop implements the quickstart's kind of recipe; anything else is refused by name."""
    problems = []
    if cfg["loss"]["name"] != "clrun/ntxent" or set(cfg["loss"]) - {"name", "temperature"}:
        problems.append("loss: only clrun/ntxent with a temperature")
    if cfg["projector"]["name"] != "clrun/mlp" or set(cfg["projector"]) - {"name", "hidden_dim", "out_dim"}:
        problems.append("projector: only clrun/mlp with hidden_dim and out_dim (its 2-layer default)")
    if not cfg["backbone"]["name"].startswith("timm/") or set(cfg["backbone"]) - {"name", "in_chans"}:
        problems.append("backbone: only timm/<model> with in_chans")
    views = cfg["views"]
    if len(views) != 1 or views[0]["count"] != 2 or views[0]["local"]:
        problems.append("views: exactly one view section with count 2")
    elif any(not t["name"].startswith("kornia/") for t in views[0]["transforms"]):
        problems.append("views: kornia ops only")
    if not cfg["optimizer"]["name"].startswith("torch/"):
        problems.append("optimizer: torch.optim ones only")
    scheduler = cfg["scheduler"]
    if scheduler is not None and (scheduler["name"] != "clrun/warmup_cosine"
                                  or set(scheduler) - {"name", "warmup_epochs"}):
        problems.append("scheduler: clrun/warmup_cosine with warmup_epochs, or none")
    if cfg["predictor"] is not None or cfg["target"] is not None or cfg["train"]["grad_clip"] is not None:
        problems.append("no predictor, target network or grad_clip")
    if problems:
        raise SystemExit("the hand-written loop implements SimCLR as recipes/quickstart.yaml does; the recipe "
                         "asks for more: " + "; ".join(problems))


def arguments(entry: dict[str, Any]) -> dict[str, Any]:
    """A recipe entry's arguments: everything but its component name."""
    return {k: v for k, v in entry.items() if k != "name"}


def timm_backbone(cfg: dict[str, Any], example: Tensor) -> tuple[nn.Module, int]:
    """The recipe's timm model without its classifier, as cl-run creates it (``num_classes=0``: pooled
    features), and the features' width, measured on ``example`` (uint8 images) in eval mode as cl-run does."""
    name = cfg["backbone"]["name"].removeprefix("timm/")
    backbone = timm.create_model(name, num_classes=0, **arguments(cfg["backbone"]))
    with torch.no_grad():
        width = backbone.eval()(example.float()).shape[1]
    return backbone.train(), width


def torch_optimizer(cfg: dict[str, Any], params: Any) -> torch.optim.Optimizer:
    """The recipe's ``torch/<Name>`` optimizer with its arguments."""
    return getattr(torch.optim, cfg["optimizer"]["name"].removeprefix("torch/"))(params, **arguments(cfg["optimizer"]))


def projector(width: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Module:
    """clrun/mlp with its defaults (2 layers, batch norm): Linear -> BatchNorm1d -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def augmentation(transforms: list[dict[str, Any]]) -> nn.Module:
    """The view's kornia ops, in order, with the recipe's parameters (YAML lists become tuples)."""
    ops = []
    for entry in transforms:
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in arguments(entry).items()}
        ops.append(getattr(K, entry["name"].removeprefix("kornia/"))(**params))
    return nn.Sequential(*ops)


def ntxent(z: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent on 2N stacked projections (N of view 1, then N of view 2): the cross entropy of
    cosine similarities / tau over all other 2N - 1 vectors, the other view of the same image as the
    target; in float32 even under autocast, as cl-run computes it."""
    with torch.autocast(z.device.type, enabled=False):
        z = F.normalize(z.float(), dim=1)
        n = len(z) // 2
        logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
        targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
        return F.cross_entropy(logits, targets)


def warmup_cosine(total_steps: int, steps_per_epoch: int, warmup_epochs: float = 10.0) -> Any:
    """clrun/warmup_cosine's per-step learning-rate factor: linear from 0, then cosine to 0."""
    warmup = min(round(warmup_epochs * steps_per_epoch), total_steps // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total_steps - warmup, 1)))

    return factor


@dataclass
class SimCLR:
    """Everything one training step uses, built from the recipe dict."""

    loader: DataLoader
    augment: nn.Module
    mean: Tensor | None  # None: the recipe sets no normalization
    std: Tensor | None
    network: nn.Module  # backbone -> projector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    temperature: float
    channels_last: bool

    def views(self, images: Tensor, device: torch.device) -> Tensor:
        """Two augmented views of every image, stacked (2B, C, H, W): one kornia call per op for both."""
        x = images.to(device, non_blocking=True).float().div_(255)
        with torch.no_grad():
            v = self.augment(x.repeat(2, 1, 1, 1))
            if self.mean is not None:
                v = (v - self.mean) / self.std
        return v.contiguous(memory_format=torch.channels_last) if self.channels_last else v

    def loss(self, views: Tensor) -> Tensor:
        return ntxent(self.network(views), self.temperature)

    def update(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()


def build(cfg: dict[str, Any], device: torch.device, total_steps: int) -> SimCLR:
    """Everything from the recipe dict, as cl-run builds it: same seed, data, network, optimizer groups and schedule
    for a run of ``total_steps`` steps."""
    check_supported(cfg)
    torch.manual_seed(cfg["seed"])
    data, train = cfg["data"], cfg["train"]
    images = dataset(cfg)
    loader = DataLoader(images, batch_size=data["batch_size"], sampler=RandomSampler(images), drop_last=True,
                        num_workers=data["num_workers"], pin_memory=device.type == "cuda",
                        persistent_workers=data["num_workers"] > 0)
    backbone, width = timm_backbone(cfg, images[0][0][None])
    network = nn.Sequential(backbone, projector(width, **arguments(cfg["projector"]))).to(device)
    if train["channels_last"]:
        network = network.to(memory_format=torch.channels_last)
    if train["compile"]:
        backbone.compile()
    params = [p for p in network.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if train["exclude_bias_and_norm_from_weight_decay"]:
        groups = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch_optimizer(cfg, groups)
    factor = lambda step: 1.0  # noqa: E731 (no scheduler: the optimizer's own rate throughout)
    if cfg["scheduler"]:
        factor = warmup_cosine(total_steps, len(loader), **arguments(cfg["scheduler"]))
    mean, std = (torch.tensor(data[k]).view(1, -1, 1, 1).to(device) if data[k] else None for k in ("mean", "std"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    augment = augmentation(cfg["views"][0]["transforms"]).to(device)
    temperature = cfg["loss"].get("temperature", 0.5)  # clrun/ntxent's default
    return SimCLR(loader, augment, mean, std, network, optimizer, scheduler, temperature, train["channels_last"])


def train_handwritten(cfg: dict[str, Any], device: torch.device, precision: str, window: StepWindow) -> dict[str, Any]:
    """The plain training loop, ``window.total`` steps; returns images/s over the timed window."""
    run = build(cfg, device, window.total)
    for images, _ in timed_batches(run.loader, window):
        with autocast(device, precision):
            loss = run.loss(run.views(images, device))
        run.update(loss)
        loss.item()  # read every step, to log it and to catch a NaN, as any real loop (and cl-run) does
    return measured(window, cfg["data"]["batch_size"], run.network)
