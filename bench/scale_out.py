"""Scale-out: the three data paths feeding the same training step, and the cost of a step-level checkpoint.

    python bench/scale_out.py                                   # CPU defaults: about 10 minutes on 2 cores
    python bench/scale_out.py --images 20000 --repeats 3 --results bench/RESULTS.md
    python bench/scale_out.py --device cuda --images 20000 --steps 60 --results bench/RESULTS.md

Data: a synthetic set of ``--images`` JPEGs of 256 px (smooth random colour fields, about 10 kB each, made
once into ``--work``) as an image folder, as tar shards (``cl-run shards``) and as Parquet files. Each is
read by ``clrun/image_folder``, ``clrun/webdataset`` and ``clrun/hf_dataset`` (streamed) at 0 and 2 loader
workers, decoded and resized to 64 px, and trained on by the same SimCLR step (the quickstart recipe on
3-channel 64 px images) for ``--steps`` steps in a fresh ``cl-run`` process; the run's own epoch record gives
images/s and ``data_wait``, the share of the step time spent waiting for data. Configurations run
interleaved, ``--repeats`` times each; medians are reported.

Checkpoints: for a network of ``--checkpoint-backbone`` with AdamW's moments, the time the training
thread is blocked by a synchronous checkpoint (serialize, fsync, rename) against a background one (the
copy of the tensors only), interleaved ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import REPO, QUICKSTART, interleave, median, spread
from reporting import report, table

LOADERS = ("image_folder", "webdataset", "hf_dataset")


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4000, help="synthetic JPEGs of 256 px (default 4000)")
    p.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint-backbone", default="timm/resnet50")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clrun-scale-out")
    p.add_argument("--results", type=Path, help="also write the tables into this file (e.g. bench/RESULTS.md)")
    return p.parse_args()


def make_data(work: Path, count: int) -> dict[str, Path]:
    """The JPEG folder, its shards and its Parquet files (made once; reused when already there)."""
    from PIL import Image

    folder, shards, parquet = work / f"jpeg{count}", work / f"shards{count}", work / f"parquet{count}"
    if not (folder / "done").exists():
        rng = np.random.default_rng(0)
        for i in range(count):
            cls = folder / f"class{i % 10}"
            cls.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # upsampled: a JPEG-friendly image
            Image.fromarray(coarse).resize((256, 256), Image.Resampling.BICUBIC).save(cls / f"{i}.jpg", quality=90)
        (folder / "done").touch()
    if not (shards / "index.json").exists():
        from clrun.commands.shards import write_shards
        write_shards(folder, shards, shard_size=max(count // 16, 1))  # 16 shards: 2 processes x 8 workers
    if not parquet.exists():
        import datasets
        files = sorted(folder.rglob("*.jpg"))
        table_ = datasets.Dataset.from_dict({"image": [str(f) for f in files],
                                             "label": [int(f.parent.name[5:]) for f in files]})
        table_ = table_.cast_column("image", datasets.Image())
        for k in range(8):
            table_.shard(8, k).to_parquet(str(parquet / f"part-{k}.parquet"))
    return {"image_folder": folder, "webdataset": shards, "hf_dataset": parquet}


def dataset_override(loader: str, path: Path) -> str:
    return {"image_folder": f"{{name: clrun/image_folder, root: {path}, size: 64}}",
            "webdataset": f"{{name: clrun/webdataset, urls: {path}, size: 64}}",
            "hf_dataset": f"{{name: clrun/hf_dataset, path: {path}, size: 64, streaming: true}}"}[loader]


def train_once(args: argparse.Namespace, loader: str, path: Path, workers: int) -> dict[str, float]:
    """One fresh `cl-run` process; its epoch record's images/s and data wait."""
    with tempfile.TemporaryDirectory() as runs:
        command = [sys.executable, "-m", "clrun", str(QUICKSTART), f"data.dataset={dataset_override(loader, path)}",
                   f"data.num_workers={workers}", f"data.batch_size={args.batch_size}", "backbone.in_chans=3",
                   "views.0.transforms.0.size=[64,64]", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]",
                   f"train.max_steps={args.steps}", "train.epochs=1", f"train.device={args.device}",
                   "train.progress=false", "health.enabled=false", "callbacks=[]", "scheduler=null", f"run.dir={runs}"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{loader} with {workers} workers failed:\n{done.stderr[-3000:]}")
        metrics = Path(runs, "quickstart", "metrics.jsonl").read_text().splitlines()
        epoch = [json.loads(line) for line in metrics if json.loads(line)["kind"] == "epoch"][-1]
        return {"images_per_s": float(epoch["images_per_s"]), "data_wait": float(epoch["data_wait"])}


def loaders(args: argparse.Namespace) -> list[str]:
    paths = make_data(args.work, args.images)
    sides = {f"{loader}, {workers} workers": (lambda l=loader, w=workers: train_once(args, l, paths[l], w))
             for workers in (0, 2) for loader in LOADERS}
    results = interleave(sides, args.repeats)
    rows = [[name, median(runs, "images_per_s"), spread(runs, "images_per_s"), f"{100 * median(runs, 'data_wait'):.1f}%"]
            for name, runs in results.items()]
    return [f"{args.images} JPEGs of 256 px decoded to 64 px; the quickstart's SimCLR step (resnet10t, 3 channels), "
            f"batch {args.batch_size}, {args.steps} steps per run (the first batches' wait, workers starting, "
            f"included), on {args.device}; median of {args.repeats} interleaved run(s).", "",
            *table(["data path", "images/s (median)", "range", "data wait"], rows)]


def checkpoints(args: argparse.Namespace) -> list[str]:
    """Training-thread blocking time of a synchronous and of a background checkpoint."""
    import clrun
    from clrun.training.checkpointing import Checkpointer
    from clrun.training.checkpointing.state import expected_size
    from clrun.training.run import Run
    from clrun.training.setup import prepare

    recipe = clrun.load_recipe(QUICKSTART, [f"backbone.name={args.checkpoint_backbone}", "data.dataset.subset=512",
                                            "health.enabled=false", "callbacks=[]", f"train.device={args.device}"])
    setup = prepare(recipe, "train", torch.device(args.device))
    parts = setup.parts
    for p in parts.network.parameters():  # AdamW's two moments exist after a first step
        p.grad = torch.zeros_like(p)
    parts.optimizer.step()
    size = expected_size(parts) / 1e6
    with tempfile.TemporaryDirectory() as folder:
        run = Run(recipe, parts, setup.device, folder, setup.steps_per_epoch)
        checkpointer = Checkpointer(run)

        def sync() -> dict[str, float]:
            start = time.perf_counter()
            checkpointer.save()
            return {"blocked_s": time.perf_counter() - start}

        def background() -> dict[str, float]:
            start = time.perf_counter()
            checkpointer.save(background=True)
            blocked = time.perf_counter() - start
            checkpointer.wait()
            return {"blocked_s": blocked, "written_s": time.perf_counter() - start}

        results = interleave({"synchronous": sync, "background": background}, max(args.repeats, 3))
    rows = [[name, median(runs, "blocked_s"), spread(runs, "blocked_s"), median(runs, "written_s")]
            for name, runs in results.items()]
    ratio = median(results["synchronous"], "blocked_s") / median(results["background"], "blocked_s")
    return [f"{args.checkpoint_backbone} with the quickstart's projector and AdamW: a checkpoint of about {size:.0f} MB "
            f"on {args.device}; seconds the training thread waits per checkpoint (median of {max(args.repeats, 3)} "
            f"interleaved), and for the background write the time until it is on disk.", "",
            *table(["checkpoint", "training blocked (s)", "range", "on disk after (s)"], rows), "",
            f"**A background checkpoint blocks training {ratio:.1f}x less than a synchronous one.**"]


if __name__ == "__main__":
    args = options()
    report(args, "scale_out_data", "Data paths: image folder, tar shards, Parquet stream", loaders(args))
    report(args, "scale_out_checkpoint", "Step-level checkpoints: synchronous against background", checkpoints(args))
