"""(e) kNN evaluation on the device against the CPU.

``clrun/knn``'s chunked search (``knn_predict``) over a synthetic labeled bank (features around one random
centre per class, plus noise): on the device with the accelerator's chunks, over an fp32 bank and over a
bf16 bank (what ``clrun/knn`` keeps on an accelerator), and on the CPU with the CPU's chunks over fp32. Records
the seconds of each, the speed-up, and the share of queries whose predicted class is the same as the CPU's:
over fp32 it must be (nearly) all of them (``MIN_AGREEMENT``; only exact near-ties may order differently),
over bf16 it is reported, not judged (rounding the features to bf16 may reorder near neighbours).
TF32 is switched off for the fp32 search, whatever a training run left set: it is part of what is compared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from gpu_check import machine
from gpu_check.context import Context
from gpu_check.record import Section

MIN_AGREEMENT = 0.999


def features(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + 2.0 * torch.randn(n, dim, generator=generator), labels


@contextmanager
def exact_fp32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def timed_search(bank: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, classes: int,
                 device: torch.device) -> tuple[torch.Tensor, float]:
    from clrun.plugins.callbacks.knn import chunks_for, knn_predict

    chunk, bank_chunk = chunks_for(device)
    bank, queries = bank.to(device), queries.to(device)
    machine.sync(device)
    start = time.perf_counter()
    predicted = knn_predict(bank, labels, queries, classes, chunk=chunk, bank_chunk=bank_chunk, device=device)
    machine.sync(device)  # predictions come back on the CPU already; this makes the clock honest regardless
    return predicted, time.perf_counter() - start


def compare(ctx: Context) -> dict[str, Any]:
    n, m, dim, classes = ctx.scale.knn
    bank, labels = features(n, dim, classes, seed=1)
    queries, truth = features(m, dim, classes, seed=2)
    cpu = torch.device("cpu")
    with exact_fp32():
        timed_search(bank[:1024], labels[:1024], queries[:64], classes, ctx.device)  # the device's first kernels
        on_device, device_s = timed_search(bank, labels, queries, classes, ctx.device)
    bank_bf16, queries_bf16 = bank.bfloat16(), queries.bfloat16()
    timed_search(bank_bf16[:1024], labels[:1024], queries_bf16[:64], classes, ctx.device)
    on_device_bf16, device_bf16_s = timed_search(bank_bf16, labels, queries_bf16, classes, ctx.device)
    on_cpu, cpu_s = timed_search(bank, labels, queries, classes, cpu)
    agreement = (on_device == on_cpu).float().mean().item()
    record = {"bank": n, "queries": m, "dim": dim, "classes": classes, "k": 20, "device": str(ctx.device),
              "device_fp32_s": device_s, "device_bf16_s": device_bf16_s, "cpu_fp32_s": cpu_s,
              "speedup_fp32": cpu_s / device_s, "agreement_fp32": agreement,
              "agreement_bf16": (on_device_bf16 == on_cpu).float().mean().item(),
              "accuracy_cpu": (on_cpu == truth).float().mean().item()}
    if agreement < MIN_AGREEMENT:
        record.update(ok=False, error=f"the device's fp32 predictions agree with the CPU's on {agreement:.4f} "
                                      f"of the queries")
    return record


def run(section: Section, ctx: Context) -> None:
    section.run("knn_device_vs_cpu", lambda: compare(ctx), ctx.scale.item_limit_s)
