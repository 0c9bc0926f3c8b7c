"""LightlySSL's reference SimCLR pipeline (its ``examples/pytorch/simclr.py``) on cl-run's recipe's data,
backbone, batch size, optimizer and precision.

As LightlySSL's example does it: per-sample torchvision transforms (its ``SimCLRTransform``) on PIL images
in DataLoader worker processes, a model of backbone + ``SimCLRProjectionHead`` called once per view, its
``NTXentLoss``, and the loss kept on the device (no per-step sync). Set to match the recipe:

* the transform does what the recipe's kornia ops do: ``RandomResizedCrop`` to the same size from the same
  scale range (same aspect-ratio range, bilinear), a horizontal flip with the same probability, brightness
  and contrast jitter with the same strengths and probability, no saturation, hue, grayscale or blur, and
  the recipe's mean/std. torchvision draws the jitter's order at random per image, kornia per batch; PIL
  resizes with antialiasing, kornia does not; gray images stay single-channel PIL "L" images.
* the same timm backbone, created as cl-run creates it, in the recipe's memory layout (``channels_last``);
  the same head widths. Lightly's head has no bias in its first Linear (batch norm follows it), cl-run's
  ``clrun/mlp`` has one: 512 parameters, nothing in the time.
* the same optimizer class and arguments, on all parameters as lightly's example does (cl-run keeps biases
  and norms out of weight decay: the same work per step). No learning-rate schedule (the example has none).
* DataLoader: ``shuffle``, ``drop_last`` and ``--lightly-workers`` worker processes as in the example (which
  uses 8; the default here is min(8, cores)), pinned memory on CUDA as cl-run has.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common import StepWindow, autocast, dataset, measured, timed_batches
from handwritten import timm_backbone, torch_optimizer

INSTALL = "pip install 'lightly==1.6.0'"


def require_lightly() -> str:
    """LightlySSL's version, or exit saying how to install it: it is an optional benchmark dependency."""
    try:
        import lightly
    except ImportError:
        raise SystemExit(f"this benchmark compares against LightlySSL, which is not installed here. Install it in the "
                         f"environment that runs the benchmarks (cl-run itself does not need it): {INSTALL}") from None
    return lightly.__version__


class PILImages(Dataset):
    """The data set's uint8 images as PIL images, each through ``transform``: lightly's transforms take PIL."""

    def __init__(self, base: Dataset, transform: Any) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        image, label = self.base[i]
        array = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
        return self.transform(Image.fromarray(array)), label


def simclr_transform(cfg: dict[str, Any]) -> Any:
    """lightly's SimCLRTransform set to do what the recipe's view does (see the module's docstring)."""
    from lightly.transforms import SimCLRTransform

    ops = {t["name"]: {k: v for k, v in t.items() if k != "name"} for t in cfg["views"][0]["transforms"]}
    known = {"kornia/RandomResizedCrop": {"size", "scale"}, "kornia/RandomHorizontalFlip": {"p"},
             "kornia/ColorJitter": {"brightness", "contrast", "saturation", "hue", "p"}}
    if set(ops) != set(known) or any(set(ops[name]) - keys for name, keys in known.items()):
        raise SystemExit(f"vs_lightly maps the quickstart's view ({', '.join(known)}, with {known}) onto lightly's "
                         f"SimCLRTransform; the recipe's view is {ops}")
    crop, flip, jitter = (ops[name] for name in known)
    size = crop["size"]
    if size[0] != size[1]:
        raise SystemExit(f"lightly's SimCLRTransform makes square crops; the recipe crops to {size}")
    data = cfg["data"]
    return SimCLRTransform(
        input_size=size[0], min_scale=crop.get("scale", (0.08, 1.0))[0], hf_prob=flip.get("p", 0.5),
        cj_prob=jitter.get("p", 1.0), cj_strength=1.0, cj_bright=jitter.get("brightness", 0.0),
        cj_contrast=jitter.get("contrast", 0.0), cj_sat=jitter.get("saturation", 0.0), cj_hue=jitter.get("hue", 0.0),
        random_gray_scale=0.0, gaussian_blur=0.0,
        normalize={"mean": data["mean"], "std": data["std"]} if data["mean"] else None,
    )


class SimCLR(nn.Module):
    """lightly's example model: the backbone's features, flattened, through SimCLRProjectionHead."""

    def __init__(self, backbone: nn.Module, width: int, hidden_dim: int, out_dim: int) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(width, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def train_lightly(cfg: dict[str, Any], device: torch.device, precision: str, workers: int,
                  window: StepWindow) -> dict[str, Any]:
    """LightlySSL's example training loop, ``window.total`` steps; returns images/s over the timed window."""
    from lightly.loss import NTXentLoss

    torch.manual_seed(cfg["seed"])
    images = dataset(cfg)
    loader = DataLoader(PILImages(images, simclr_transform(cfg)), batch_size=cfg["data"]["batch_size"], shuffle=True,
                        drop_last=True, num_workers=workers, pin_memory=device.type == "cuda")
    backbone, width = timm_backbone(cfg, images[0][0][None])
    head = cfg["projector"]
    model = SimCLR(backbone, width, head.get("hidden_dim", 2048), head.get("out_dim", 128)).to(device)
    layout = torch.channels_last if cfg["train"]["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=layout)
    criterion = NTXentLoss(temperature=cfg["loss"].get("temperature", 0.5))
    optimizer = torch_optimizer(cfg, model.parameters())

    total_loss = torch.zeros((), device=device)
    for (x0, x1), _ in timed_batches(loader, window):
        x0 = x0.to(device, memory_format=layout)
        x1 = x1.to(device, memory_format=layout)
        with autocast(device, precision):
            z0 = model(x0)
            z1 = model(x1)
            loss = criterion(z0, z1)
        total_loss += loss.detach()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return measured(window, cfg["data"]["batch_size"], model)
