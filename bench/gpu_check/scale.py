"""How big each section's work is: ``GPU`` (what the GPU machine runs, about 4 minutes) and ``CPU`` (every
section at tiny sizes, so CI runs the whole check on 2 cores in well under its 90 s and the script cannot rot).

The GPU sizes follow the real recipes: full models at 224 px (ResNet-50, ViT-S/16, ViT-B/16, ViT-H/14), small
batches for the crash smoke, per-GPU batches of the papers for the throughput. The CPU sizes shrink the
ImageNet recipes' models and crops (``recipes.tiny``) but keep every code path: the same recipes, overrides,
callbacks, counters and records.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """A recipe measured at a per-step batch (images per optimizer step)."""

    item: str
    recipe: str
    batch: int


@dataclass(frozen=True)
class Scale:
    name: str
    threads: int | None  # torch's CPU threads (None: torch's default)
    tiny: bool  # shrink the ImageNet recipes' models and crops (recipes.tiny)
    budgets: dict[str, float]  # seconds per section
    item_limit_s: float  # no item runs longer (a hang costs this much, not the section)
    # (a) crash smoke: optimizer steps per recipe, batch by data kind, evaluator banks (train, test images)
    smoke_steps: int
    smoke_only: tuple[str, ...] | None  # None: every recipe of recipes.smoke_selection; else these of them
    smoke_batch: dict[str, int]
    eval_images: tuple[int, int]
    # (b) sync audit: recipes at a batch, steps before the audit and audited
    sync_runs: tuple[Measured, ...]
    sync_warmup: int
    sync_steps: int
    # (c) throughput, memory, MFU and (d) compile: configurations, untimed then timed steps
    throughput_runs: tuple[Measured, ...]
    compile_runs: tuple[Measured, ...]
    compile_backend: str | None  # None: torch.compile's default (inductor)
    warmup: int
    steps: int
    # (e) kNN: bank rows, queries, feature width, classes
    knn: tuple[int, int, int, int]


SECTIONS = ("smoke", "syncs", "throughput", "compile", "knn")

GPU = Scale(
    name="gpu",
    threads=None,
    tiny=False,
    # 245 s in all: with Python, torch and CUDA starting, about 4 minutes (the smoke's ViT-H run writes a 13 GB
    # checkpoint at its end; a cold inductor compile of ResNet-50's training step takes most of a minute).
    budgets={"smoke": 85, "syncs": 30, "throughput": 60, "compile": 60, "knn": 10},
    item_limit_s=60,
    smoke_steps=3,
    smoke_only=None,
    smoke_batch={"imagenet": 16, "fmnist": 64, "cifar": 64, "other": 64},
    eval_images=(1024, 512),
    sync_runs=(Measured("resnet50_simclr", "simclr_r50", 32), Measured("dino_vits16", "dino_vits16", 32),
               Measured("ibot_vits16", "ibot_vits16", 32), Measured("mae_vitb16", "mae_vitb16", 32),
               Measured("ijepa_vith14", "ijepa_vith14", 16), Measured("mocov2_fmnist", "mocov2_fmnist", 128),
               Measured("swav_fmnist", "swav_fmnist", 128)),
    sync_warmup=2,
    sync_steps=3,
    # DINO and iBOT at their papers' 64 images per GPU; SimCLR ResNet-50 and MAE ViT-B at 128.
    throughput_runs=(Measured("resnet50_simclr", "simclr_r50", 128), Measured("dino_vits16", "dino_vits16", 64),
                     Measured("ibot_vits16", "ibot_vits16", 64), Measured("mae_vitb16", "mae_vitb16", 128)),
    compile_runs=(Measured("resnet50_simclr", "simclr_r50", 128), Measured("dino_vits16", "dino_vits16", 64)),
    compile_backend=None,
    warmup=5,
    steps=10,
    knn=(65536, 4096, 384, 1000),
)

CPU = Scale(
    name="cpu",
    # One thread: at these sizes two OpenMP threads gain little, and on a busy machine (CI runs two test
    # workers) they spin against each other: a tiny ResNet's step took 3.4x longer with two (measured).
    threads=1,
    tiny=True,
    budgets={"smoke": 40, "syncs": 10, "throughput": 12, "compile": 15, "knn": 5},
    item_limit_s=30,
    smoke_steps=1,
    smoke_only=None,
    smoke_batch={"imagenet": 8, "fmnist": 16, "cifar": 8, "other": 16},
    eval_images=(128, 64),
    sync_runs=(Measured("resnet50_simclr", "simclr_r50", 8), Measured("mae_vitb16", "mae_vitb16", 8)),
    sync_warmup=1,
    sync_steps=2,
    throughput_runs=(Measured("resnet50_simclr", "simclr_r50", 8), Measured("dino_vits16", "dino_vits16", 8)),
    # One tiny model, through dynamo and AOT autograd but not inductor's C++ code generation, which takes a
    # minute on 2 cores even for a one-block ViT (measured: 40 s cold; aot_eager 5 s).
    compile_runs=(Measured("dino_vits16", "dino_vits16", 8),),
    compile_backend="aot_eager",
    warmup=1,
    steps=2,
    knn=(4096, 256, 64, 10),
)


def for_device(device_type: str) -> Scale:
    return GPU if device_type == "cuda" else CPU
