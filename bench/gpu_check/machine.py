"""The machine the check runs on: its device, the versions found, its peak bf16 rate, its memory counters."""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import platform
import shutil
import sys
from typing import Any

import torch

# Peak dense bf16 tensor-core rate (FLOP/s) from the vendors' spec sheets, by a part of the name
# torch.cuda.get_device_name() reports; the first match wins, so the specific names come first. MFU is
# measured FLOPs per second over this; an unlisted GPU gets no MFU rather than a guessed one.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
)

# Distributions whose versions say what was measured (import name, distribution name).
PACKAGES = (("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"), ("kornia", "kornia"),
            ("kornia_rs", "kornia_rs"), ("webdataset", "webdataset"), ("numpy", "numpy"), ("PIL", "pillow"),
            ("pluggy", "pluggy"), ("yaml", "pyyaml"), ("safetensors", "safetensors"), ("clrun", None))


def device(name: str, need: bool = True) -> torch.device:
    """``cuda`` (the default) or ``cpu``. CUDA asked for where torch sees none is an error, not a silent CPU
    run, unless the device is not ``need``ed (a dry run only names it)."""
    chosen = torch.device(name)
    if need and chosen.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device here; DEVICE=cpu runs the check on the CPU")
    return chosen


def use_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # no tensor-core peak to compare with: MFU is null on the CPU
    name = torch.cuda.get_device_name(device)
    return next((rate for part, rate in PEAK_BF16_FLOPS if part in name), None)


def version_of(module: str, distribution: str | None) -> dict[str, Any]:
    """A package's version and where it was imported from (the machine's site-packages or the payload)."""
    try:
        imported = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 (a missing package is a finding, written down)
        return {"version": None, "error": f"{type(exc).__name__}: {exc}"}
    version = getattr(imported, "__version__", None)
    if distribution is not None:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"version": version, "from": str(getattr(imported, "__file__", "") or "")}


def versions(device: torch.device, wheels: list[str]) -> dict[str, Any]:
    """The environment record: Python, the packages, CUDA and the GPU, the matmul precision settings."""
    found: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {module: version_of(module, dist) for module, dist in PACKAGES},
        "payload_wheels": wheels,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        # Inductor's Triton kernels need a C compiler on the machine (for their launchers): none, no compile.
        "c_compiler": shutil.which("cc") or shutil.which("gcc"),
    }
    if device.type == "cuda" and torch.cuda.is_available():  # not in a dry run on a machine without one
        props = torch.cuda.get_device_properties(device)
        found.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), gpu=props.name,
                     gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count(),
                     capability=f"{props.major}.{props.minor}", peak_bf16_flops=peak_flops(device),
                     **matmul_settings(device))
    return found


def matmul_settings(device: torch.device) -> dict[str, Any]:
    """What fp32 matrix products and convolutions ran in (a run's ``train.tf32`` may have changed it)."""
    if device.type != "cuda":
        return {}
    return {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    """The allocator's peak since the last ``reset_peak``; None on the CPU (no allocator to ask)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def release(device: torch.device) -> None:
    """Between items on a GPU: collect the last run's modules (a run's objects refer to each other, so only
    the cycle collector frees them) and give the cached memory back, so the next item's peak is its own.
    Nothing on the CPU: no device memory to give back, and the collector runs on its own there."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
