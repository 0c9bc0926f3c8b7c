"""Dense features of the scene recipes against their untrained encoder: DINO and iBOT trained on
``clrun/fmnist_scenes`` canvases, scored at the end by both dense evaluators (``clrun/patch_knn``,
``clrun/linear_segmentation``, the recipes' own settings), beside the same encoder straight from its
initialization, scored by the same evaluators.

    python bench/dense_scenes.py                                    # as shipped, seeds 0 1 2 (about 20 min, 2 CPU cores)
    python bench/dense_scenes.py --seeds 0 --epochs 40 --scenes 20000   # a longer run
    python3 bench/dense_scenes.py --device cuda --batch 256 --epochs 100 --scenes 50000 --out "$OUT/dense"

The last is for the GPU machine (Python and torch only, no network): the packages cl-run needs beyond them
come from ``bench/.gpu_payload`` (``bash bench/gpu_wheels.sh``) and Fashion-MNIST from its ``fashion-mnist/``
folder, as for ``bench/gpu_check.py``. There the runs train in bf16.

Why a script: in a few CPU minutes neither recipe beats its untrained encoder on dense features
(bench/RESULTS.md, "Dense evaluation on Fashion-MNIST scenes"); whether a longer run does is what this
measures, the same way on any machine. Each (recipe, seed) gives one JSON line in ``<out>/dense_scenes.jsonl``
(written as it ends) and one row of the Markdown table printed at the end (``<out>/dense_scenes.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: gpu_check, reporting
from gpu_check import bootstrap  # noqa: E402  (before anything imports cl-run)

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("dino_fmnist_scenes", "ibot_fmnist_scenes")
DENSE = ("clrun/patch_knn", "clrun/linear_segmentation")
METRICS = ("patch_knn_miou", "seg_linear_miou", "patch_knn_pixel_accuracy", "seg_linear_pixel_accuracy")


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), help="recipe names under recipes/")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    p.add_argument("--scenes", type=int, help="training scenes (default: the recipe's)")
    p.add_argument("--batch", type=int, help="scenes per step (default: the recipe's)")
    p.add_argument("--eval-scenes", nargs=2, type=int, metavar=("TRAIN", "TEST"),
                   help="scenes the dense evaluators fit on and score (default: the recipe's)")
    p.add_argument("--supervised", action="store_true", help="also train the encoder with labels for as many "
                   "steps (bench/dense_supervised.py) and score it: what the steps allow")
    p.add_argument("--data-root", help="folder with the four Fashion-MNIST .gz files (default: the GPU payload's "
                   "when it has them, else the data set's default)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dense_scenes",
                   help="folder for dense_scenes.jsonl, dense_scenes.md and the runs")
    return p.parse_args()


def data_root(args: argparse.Namespace) -> str | None:
    return args.data_root or bootstrap.carried_fmnist()


def dense_callbacks(raw: dict[str, Any], root: str | None, eval_scenes: list[int] | None) -> list[dict[str, Any]]:
    """The recipe's dense evaluators, as written, with the data root and scene counts asked for."""
    callbacks = [dict(c) for c in raw["callbacks"] if c["name"] in DENSE]
    if [c["name"] for c in callbacks] != list(DENSE):
        raise SystemExit(f"the recipe's callbacks must include {' and '.join(DENSE)}")
    for c in callbacks:
        for key, count in zip(("train", "test"), eval_scenes or (None, None)):
            c[key] = {**c[key], **({"root": root} if root else {}), **({"scenes": count} if count else {})}
    return callbacks


def overrides(args: argparse.Namespace, raw: dict[str, Any], seed: int, root: str | None) -> list[str]:
    out = [f"seed={seed}", f"train.device={args.device}", "train.progress=false", "health.enabled=false",
           f"run.dir={args.out / 'runs'}", f"callbacks={json.dumps(dense_callbacks(raw, root, args.eval_scenes))}"]
    if args.device != "cpu":
        out.append("train.precision=bf16")
    for key, value in (("train.epochs", args.epochs), ("data.dataset.scenes", args.scenes),
                       ("data.batch_size", args.batch), ("data.dataset.root", root)):
        if value is not None:
            out.append(f"{key}={value}")
    return out


def measure(args: argparse.Namespace, name: str, seed: int, root: str | None) -> dict[str, Any]:
    import yaml

    import clrun
    from dense_supervised import built, evaluate, supervised_scores  # bench/: imports cl-run, so imported late

    path = REPO / "recipes" / f"{name}.yaml"
    recipe = clrun.load_recipe(path, overrides(args, yaml.safe_load(path.read_text()), seed, root))
    untrained = evaluate(recipe, built(recipe, args.device))  # the encoder before its first step
    started = time.perf_counter()
    run = clrun.train(recipe)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (run.directory / "metrics.jsonl").read_text().splitlines()]
    steps = max((r.get("step", 0) for r in records), default=0)
    return {"recipe": name, "seed": seed, "device": args.device, "steps": steps,
            "images": steps * recipe.data.batch_size, "seconds": round(seconds, 1),
            "epoch_losses": [r["loss"] for r in records if r["kind"] == "epoch"],
            **{f"untrained_{m}": untrained[m] for m in METRICS}, **{m: run.summary[m] for m in METRICS},
            **(supervised_scores(recipe, args.device, steps, seed) if args.supervised else {})}


def table(rows: list[dict[str, Any]]) -> list[str]:
    """One row per run; gains in points; the supervised ceiling's columns where it was measured."""
    supervised = all("supervised_patch_knn_miou" in r for r in rows)
    header = ["recipe", "seed", "steps", "patch kNN mIoU", "untrained", "gain", "linear mIoU", "untrained", "gain",
              *(["supervised: patch kNN", "linear"] if supervised else []), "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"`{r['recipe']}`", r["seed"], r["steps"]]
        for m in ("patch_knn_miou", "seg_linear_miou"):
            cells += [f"{100 * r[m]:.2f}%", f"{100 * r['untrained_' + m]:.2f}%",
                      f"{100 * (r[m] - r['untrained_' + m]):+.2f}"]
        if supervised:
            cells += [f"{100 * r['supervised_' + m]:.2f}%" for m in ("patch_knn_miou", "seg_linear_miou")]
        lines.append("| " + " | ".join(map(str, [*cells, f"{r['seconds']:.0f} s"])) + " |")
    return lines


def main() -> int:
    args = options()
    bootstrap.prepare()  # no-op beyond mapping cl-run to this tree where the payload is absent
    from reporting import machine

    args.out.mkdir(parents=True, exist_ok=True)
    root = data_root(args)
    rows = []
    with open(args.out / "dense_scenes.jsonl", "a", encoding="utf-8") as log:
        for name in args.recipes:
            for seed in args.seeds:
                rows.append(measure(args, name, seed, root))
                log.write(json.dumps(rows[-1]) + "\n")
                log.flush()
    lines = [f"Measured on {machine()}.", "", *table(rows)]
    (args.out / "dense_scenes.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
