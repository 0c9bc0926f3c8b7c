"""Evaluation at scale: the kNN search's peak memory over a large bank, and its predictions on Fashion-MNIST.

    python bench/eval_memory.py                          # about 5 minutes on 2 cores
    python bench/eval_memory.py --run runs/quickstart    # + the agreement on a trained encoder's features
    python bench/eval_memory.py --results bench/RESULTS.md

Memory: a synthetic bank of ``--bank`` x ``--dim`` features (500k x 384, a ViT-S on a 40% ImageNet) and
``--queries`` queries, searched with ``k=20`` by ``clrun/knn``'s ``knn_predict`` (chunked, over an fp32 and
a bf16 bank) and by the whole-matrix search it replaced (the normalized bank copied in fp32, each query
chunk's similarities to the whole bank at once). Each in a fresh process; host memory is the peak PSS
(``memory.PeakMemory``) above the level once the bank exists, i.e. what the search adds, and the whole
peak with the bank; both also per 1M images x D (MB per million images per feature dimension), the figure
to extrapolate with (ImageNet's 1.28M x 384: multiply by 1.28 x 384).

Predictions on Fashion-MNIST (the full 60k bank, all 10k test images): the chunked search over fp32
features against the whole-matrix one (identical is the requirement), and over a bf16 bank (its agreement
rate: rounding to bf16 may reorder near-ties), for features of a random one-layer network (784 -> 64,
ReLU; what the unit test uses) and, with ``--run``, a trained run's backbone (as ``cl-run eval`` embeds it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: its tests' reference search
from tests.helpers.knn_reference import whole_matrix_knn  # noqa: E402

from memory import PeakMemory
from reporting import report, table

VARIANTS = {"whole matrix, fp32 bank (before)": ("whole", torch.float32),
            "chunked, fp32 bank": ("chunked", torch.float32),
            "chunked, bf16 bank": ("chunked", torch.bfloat16)}


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=2048)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--run", type=Path, help="a trained run folder: also measure on its encoder's features")
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", type=Path)
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one memory measurement, in this process
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def synthetic(n: int, dim: int, classes: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` features around ``classes`` random centres, made in ``dtype`` a chunk at a time (a bf16 bank
    never exists in fp32 whole, here either), and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, classes, (n,), generator=g)
    x = torch.empty(n, dim, dtype=dtype)
    for start in range(0, n, 8192):
        y = labels[start:start + 8192]
        x[start:start + 8192] = centres[y] + 2.0 * torch.randn(len(y), dim, generator=g)
    return x, labels


def one_variant(args: argparse.Namespace) -> dict:
    """In a fresh process: the bank, then the search under PeakMemory; the predictions go to ``args.out``."""
    from clrun.plugins.callbacks.knn import chunks_for, knn_predict

    kind, dtype = VARIANTS[args.variant]
    device = torch.device(args.device)
    chunk, bank_chunk = chunks_for(device)
    with PeakMemory(device) as whole:  # from before the bank exists: the bank and the search together
        bank, labels = synthetic(args.bank, args.dim, args.classes, dtype, seed=1)
        queries, _ = synthetic(args.queries, args.dim, args.classes, dtype, seed=2)
        start = time.perf_counter()
        with PeakMemory(device) as search:  # what the search adds to the bank
            if kind == "whole":
                predicted = whole_matrix_knn(bank, labels, queries, args.classes)
            else:
                predicted = knn_predict(bank, labels, queries, args.classes, chunk=chunk, bank_chunk=bank_chunk,
                                        device=device)
        seconds = time.perf_counter() - start
    torch.save(predicted, args.out)
    bank_mb = bank.numel() * bank.element_size() / 2**20
    return {"bank_mb": bank_mb, "added_mb": search.host_mb - search.host_before_mb,
            "peak_mb": whole.host_mb - whole.host_before_mb, "seconds": seconds}


def memory(args: argparse.Namespace) -> list[str]:
    per_million_d = args.bank / 1e6 * args.dim
    rows, predictions = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in VARIANTS:
            out = Path(scratch) / f"{len(predictions)}.pt"
            measured = in_new_process_with(args, name, out)
            predictions[name] = torch.load(out, weights_only=True)
            rows.append([name, measured["bank_mb"], measured["added_mb"], measured["added_mb"] / per_million_d,
                         measured["peak_mb"], measured["peak_mb"] / per_million_d, measured["seconds"]])
    before = predictions["whole matrix, fp32 bank (before)"]
    same = [f"{100 * (p == before).float().mean().item():.2f}%" for p in predictions.values()]
    return [f"Bank {args.bank:,} x {args.dim} (synthetic, {args.classes} classes), {args.queries:,} queries, "
            f"k=20, on {args.device}; host memory (peak PSS) in MB, each in a fresh process. *Search adds*: the "
            f"peak above the level once the bank exists (what the search itself holds); *bank + search*: the peak "
            f"above the level before the bank was made. Per 1M x D: MB per million images per feature dimension "
            f"(x 1.28 x 384 for ImageNet with a ViT-S).", "",
            *table(["search", "bank MB", "search adds MB", "per 1M x D", "bank + search MB", "per 1M x D", "s",
                    "same predictions as before"],
                   [row + [s] for row, s in zip(rows, same)])]


def in_new_process_with(args: argparse.Namespace, variant: str, out: Path) -> dict:
    """One variant measured in a fresh process (its own heap: the peaks do not mix); the last line it prints
    is a JSON object of measurements."""
    command = [sys.executable, sys.argv[0], *sys.argv[1:], "--variant", variant, "--out", str(out)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"eval_memory.py --variant {variant!r} failed (exit code {done.returncode}); its output is above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fashion_mnist_features(args: argparse.Namespace) -> dict[str, tuple[torch.Tensor, ...]]:
    """(bank, bank labels, queries, query labels) of each feature kind measured on Fashion-MNIST."""
    from clrun.plugins.datasets.fashion_mnist import FashionMNIST

    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    weights = torch.randn(784, 64, generator=torch.Generator().manual_seed(0))
    kinds = {"random one-layer network, 64-d": tuple(  # as the unit test makes them
        torch.relu(d.images.flatten(1).float() @ weights) for d in (train, test))}
    if args.run is not None:
        run = trained_run(args.run)
        bank, queries = (run.features(d, dtype="fp32").features for d in (train, test))
        kinds[f"{args.run.name}'s backbone, {bank.shape[1]}-d"] = (bank, queries)
    return {name: (bank, train.targets, queries, test.targets) for name, (bank, queries) in kinds.items()}


def trained_run(folder: Path):
    """The run in ``folder`` with its checkpoint's network, on the CPU, as ``cl-run eval`` builds it."""
    import clrun
    from clrun.run_folder import RunFolder
    from clrun.training import checkpointing
    from clrun.training.run import Run
    from clrun.training.setup import prepare

    recipe = clrun.load_recipe(RunFolder(folder).recipe)
    setup = prepare(recipe, "eval", torch.device("cpu"))
    saved = checkpointing.find(folder, "eval")
    checkpointing.load_module(setup.parts.network, checkpointing.load(saved, "eval", parts=("network",))["network"],
                              str(saved), "")
    return Run(recipe, setup.parts, setup.device, None, steps_per_epoch=1)


def agreement(args: argparse.Namespace) -> list[str]:
    from clrun.plugins.callbacks.knn import knn_predict

    rows = []
    for name, (bank, bank_y, queries, truth) in fashion_mnist_features(args).items():
        before = whole_matrix_knn(bank, bank_y, queries, 10)
        chunked = knn_predict(bank, bank_y, queries, 10)
        half = knn_predict(bank.bfloat16(), bank_y, queries.bfloat16(), 10)
        rows.append([name, "yes" if torch.equal(chunked, before) else f"NO ({int((chunked != before).sum())} differ)",
                     f"{100 * (half == before).float().mean().item():.2f}%",
                     f"{100 * (before == truth).float().mean().item():.2f}%",
                     f"{100 * (half == truth).float().mean().item():.2f}%"])
    return ["Fashion-MNIST: the 60,000 training images as the bank, the 10,000 test images as queries, k=20, "
            "T=0.07 (clrun/knn's defaults), on the CPU.", "",
            *table(["features", "chunked fp32 = before", "bf16 bank agrees with before", "top-1 before",
                    "top-1 bf16 bank"], rows)]


def main() -> None:
    args = options()
    if args.variant:  # a child process: one measurement, printed as JSON on the last line
        print(json.dumps(one_variant(args)))
        return
    lines = ["#### Peak memory of the search", "", *memory(args), "",
             "#### Predictions on Fashion-MNIST", "", *agreement(args)]
    report(args, "eval_memory", "Evaluation at scale: kNN memory and predictions", lines)


if __name__ == "__main__":
    main()
