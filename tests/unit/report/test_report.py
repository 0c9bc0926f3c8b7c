"""The run report and the sweep report, built from synthetic run folders (no training: the report reads
only files, so realistic files are all a test needs)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from clrun.report import sweep_figure, write_report, write_sweep_report
from clrun.report.markdown import render
from clrun.report.plots import FIGURES, accuracy_figure, dense_figure
from clrun.report.records import number, read_run

PLOTS = ("loss", "accuracy", "alignment_uniformity", "health", "similarities")
RECIPE = {
    "seed": 0,
    "data": {"dataset": {"name": "clrun/synthetic"}, "batch_size": 16},
    "backbone": {"name": "timm/resnet18"},
    "projector": {"name": "clrun/mlp", "out_dim": 128},
    "loss": {"name": "clrun/ntxent", "temperature": 0.2},
    "optimizer": {"name": "torch/AdamW", "lr": 0.001},
    "train": {"epochs": 4},
}
HALT = "collapse alarm at epoch 3: projector std_sqrt_d = 0.01 < 0.1 for 2 checks in a row (since epoch 2)"


def health_metrics(epoch: int) -> dict[str, float]:
    m = {}
    for suffix, scale in (("_backbone", 1.0), ("_projector", 0.8)):
        m.update({
            f"alignment{suffix}": 0.9 - 0.1 * epoch * scale, f"uniformity{suffix}": -1.0 - 0.3 * epoch * scale,
            f"std_sqrt_d{suffix}": 0.6 + 0.1 * epoch, f"rankme{suffix}": 10.0 + 5 * epoch * scale,
            f"pos_cosine{suffix}": 0.5 + 0.1 * epoch, f"neg_cosine{suffix}": 0.2 - 0.03 * epoch,
        })
    return m


def histogram(shift: float) -> dict[str, list]:
    edges = [round(-1 + 0.05 * i, 6) for i in range(41)]
    positive = [max(0, 20 - abs(i - int(30 + shift))) for i in range(40)]
    negative = [max(0, 400 - 30 * abs(i - 20)) for i in range(40)]
    return {"edges": edges, "positive": positive, "negative": negative}


def write_lines(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def make_run(folder: Path, epochs: int = 4, steps_per_epoch: int = 5, halted: str | None = None,
             eval_results: dict | None = None) -> Path:
    """A run folder as a finished (or halted) run leaves it."""
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False), encoding="utf-8")
    metrics, health = [], []
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            metrics.append({"kind": "step", "step": step, "epoch": epoch, "loss": 5.0 / step ** 0.3,
                            "lr": 0.001 * (1 - step / (epochs * steps_per_epoch)), "contrastive_acc": 0.1 * epoch,
                            "pos_cosine": 0.4})
        record = {"kind": "epoch", "epoch": epoch, "step": step, "loss": 5.0 / step ** 0.3, "images_per_s": 1200.0,
                  "epoch_time_s": 2.5, "knn_top1": 0.5 + 0.08 * epoch, "knn_top1_projector": 0.5 + 0.07 * epoch,
                  **health_metrics(epoch)}
        metrics.append(record)
        health.append({"epoch": epoch, "step": step, "metrics": health_metrics(epoch),
                       "histograms": {"backbone": histogram(epoch), "projector": histogram(epoch / 2)},
                       "alarm": {"branch": "projector", "signals": ["std_sqrt_d"] if epoch >= 2 and halted else [],
                                 "fired": HALT if epoch == 3 and halted else None}})
    final = {"epoch": epochs, "step": step, "wall_time_s": 754.2, "loss": 2.1,
             "knn_top1": 0.8187, "knn_top1_projector": 0.7810}
    if halted:
        final["halted"] = halted
    metrics.append({"kind": "final", **final})
    write_lines(folder / "metrics.jsonl", metrics)
    write_lines(folder / "health.jsonl", health)
    (folder / "summary.json").write_text(json.dumps(final, indent=2), encoding="utf-8")
    if eval_results is not None:
        (folder / "eval.json").write_text(json.dumps({"checkpoint": "checkpoint.pt", "epoch": epochs,
                                                      "results": eval_results}), encoding="utf-8")
    return folder


def assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 0 and image.size[1] > 0
        image.verify()


def table_row(report: str, first_cell: str) -> list[str]:
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{report}")


def test_full_run_gives_all_plots_and_the_branch_comparison(tmp_path):
    run = make_run(tmp_path / "simclr-r18", eval_results={"linear_top1": 0.85, "linear_top1_projector": 0.80})
    (run / "encoder.safetensors").write_bytes(b"stub")
    path = write_report(run)
    assert path == run / "report.md"
    for name in PLOTS:
        assert_png(run / "plots" / f"{name}.png")
    report = path.read_text(encoding="utf-8")
    assert report.startswith("# Run report: `simclr-r18`")
    assert "`timm/resnet18`" in report and "`clrun/mlp`" in report and "`clrun/ntxent`" in report
    assert "4 of 4 epochs" in report and "(20 steps)" in report and "12.6 min" in report
    assert table_row(report, "kNN") == ["kNN", "81.87", "78.10", "+3.77"]
    assert table_row(report, "linear probe") == ["linear probe", "85.00", "80.00", "+5.00"]
    assert "use the backbone for downstream" in report
    for name in PLOTS:
        assert f"](plots/{name}.png)" in report
    assert not (run / "plots" / "dense.png").exists() and "dense.png" not in report  # no mIoU was recorded
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json", "encoder.safetensors", "eval.json"):
        assert f"[{name}]({name})" in report
    std = table_row(report, "std_sqrt_d")
    assert std[1:3] == ["1", "1"] and "collapsed" in std[3]  # the last check: 0.6 + 0.1 * 4
    assert "halted" not in report.lower()
    assert "The alarm never fired." in report
    assert not list(run.glob("**/*.tmp"))  # atomic writes leave no temporary files
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not a temp file's 0600


def test_eval_json_overrides_the_training_values(tmp_path):
    run = make_run(tmp_path / "run", eval_results={"knn_top1": 0.70, "knn_top1_projector": 0.75,
                                                   "patch_knn_miou": 0.40, "patch_knn_pixel_accuracy": 0.80})
    report = write_report(run).read_text(encoding="utf-8")
    assert table_row(report, "kNN") == ["kNN", "70.00", "75.00", "-5.00"]
    assert "projector outputs beat the backbone" in report
    assert table_row(report, "kNN top-1 (backbone)")[1:] == ["70.00 %", "eval.json"]
    # `cl-run eval` with a dense evaluator on a run that had none: its scores in percent, and a dense plot
    assert table_row(report, "patch knn mIoU (backbone)")[1:] == ["40.00 %", "eval.json"]
    assert table_row(report, "patch knn pixel accuracy (backbone)")[1:] == ["80.00 %", "eval.json"]
    assert_png(run / "plots" / "dense.png")
    assert "](plots/dense.png)" in report


def test_halted_run_shows_the_message_and_the_alarm(tmp_path):
    run = make_run(tmp_path / "collapse", epochs=3, halted=HALT + "; no checkpoint was written. Advice.")
    report = write_report(run).read_text(encoding="utf-8")
    assert "**The run was halted:** " + HALT in report
    assert "**Run halted:** " + HALT in report
    assert "std_sqrt_d at epochs 2, 3" in report
    assert f"Alarm fired: {HALT}" in report


def test_recipe_and_partial_metrics_only_still_give_a_report(tmp_path):
    run = tmp_path / "crashed"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    lines = [json.dumps({"kind": "step", "step": s, "epoch": 1, "loss": 4.0 - 0.1 * s, "lr": 0.001}) for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "step", "st', encoding="utf-8")  # torn line
    report = write_report(run).read_text(encoding="utf-8")
    assert_png(run / "plots" / "loss.png")
    for name in PLOTS[1:]:
        assert not (run / "plots" / f"{name}.png").exists()
        assert f"plots/{name}.png" not in report
    assert "`summary.json` is missing" in report and "`health.jsonl` is missing" in report
    assert "1 unreadable line(s) skipped" in report
    assert "No accuracy was measured" in report and "No health check was recorded." in report
    assert "Planned for 4 epochs" in report and "(3 steps)" in report


def test_recipe_only_gives_a_report_without_plots(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    report = write_report(run).read_text(encoding="utf-8")
    assert "`metrics.jsonl` is missing" in report and "No plot could be drawn" in report
    assert not list((run / "plots").glob("*.png"))


def test_a_missing_run_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_nan_strings_are_read_and_shown(tmp_path):
    run = make_run(tmp_path / "nan")
    summary = json.loads((run / "summary.json").read_text())
    summary.update(knn_top1_projector="nan", loss="nan")
    (run / "summary.json").write_text(json.dumps(summary))
    health = [json.loads(line) for line in (run / "health.jsonl").read_text().splitlines()]
    health[-1]["metrics"].update(uniformity_projector="nan", std_sqrt_d_projector="nan", rankme_projector="inf")
    write_lines(run / "health.jsonl", health)
    assert math.isnan(number(read_run(run).health[-1]["metrics"]["uniformity_projector"]))
    report = write_report(run).read_text(encoding="utf-8")
    for name in PLOTS:
        assert_png(run / "plots" / f"{name}.png")
    assert table_row(report, "kNN") == ["kNN", "81.87", "nan", "n/a"]
    assert table_row(report, "std_sqrt_d")[1:3] == ["1", "nan"]
    assert table_row(report, "rankme")[2] == "inf"
    assert table_row(report, "loss")[1] == "nan"


def test_report_is_rewritten_and_stale_plots_removed(tmp_path):
    run = make_run(tmp_path / "again")
    write_report(run)
    (run / "health.jsonl").unlink()
    # without health.jsonl the epoch records still carry the health metrics, but no histograms
    report = write_report(run).read_text(encoding="utf-8")
    assert not (run / "plots" / "similarities.png").exists() and "similarities.png" not in report
    assert_png(run / "plots" / "health.png")
    assert table_row(report, "alignment")[1:3] == ["0.5", "0.58"]


def test_bare_health_keys_in_epoch_records_are_the_backbone(tmp_path):
    """Epoch records may name the backbone's health metrics without a suffix; a bare ``pos_cosine`` is
    then the backbone's too (no ``_backbone`` twin to prefer)."""
    run = tmp_path / "bare"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    epochs = [{"kind": "epoch", "epoch": e, "step": 10 * e, "loss": 3.0 / e,
               **{k.removesuffix("_backbone"): v for k, v in health_metrics(e).items()}} for e in (1, 2)]
    write_lines(run / "metrics.jsonl", epochs)
    report = write_report(run).read_text(encoding="utf-8")
    assert table_row(report, "uniformity")[1:3] == ["-1.6", "-1.48"]
    assert table_row(report, "pos_cosine")[1:3] == ["0.7", "0.7"]
    for name in ("loss", "alignment_uniformity", "health"):
        assert_png(run / "plots" / f"{name}.png")


def sweep_rows(tmp_path: Path) -> list[dict]:
    rows = []
    for i, temperature in enumerate((0.05, 0.1, 0.2, 0.5)):
        run = tmp_path / "sweep" / f"t-{temperature}"  # the runs themselves are not read
        rows.append({"value": temperature, "run": str(run), "knn_top1": 0.7 + 0.02 * i,
                     "knn_top1_projector": 0.65 + 0.02 * i, "linear_top1": 0.75 + 0.01 * i,
                     "alignment": 0.5 - 0.05 * i, "uniformity": -2.0 - 0.2 * i,
                     "alignment_projector": 0.4, "uniformity_projector": "nan" if i == 3 else -3.0})
    return rows


def test_sweep_report_writes_csv_markdown_and_plot(tmp_path):
    rows = sweep_rows(tmp_path)
    sweep_dir = tmp_path / "sweep"
    path = write_sweep_report(sweep_dir, "loss.temperature", rows)
    assert path == sweep_dir / "sweep.md"
    assert_png(sweep_dir / "sweep.png")
    with open(sweep_dir / "sweep.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["value"] for r in table] == ["0.05", "0.1", "0.2", "0.5"]
    assert list(table[0])[:2] == ["value", "run"] and "uniformity_projector" in table[0]
    assert table[3]["uniformity_projector"] == "nan"
    md = path.read_text(encoding="utf-8")
    assert "# Sweep over `loss.temperature`" in md
    row = table_row(md, "0.2")
    assert row[1:4] == ["74.00", "69.00", "77.00"]  # kNN backbone, kNN projector, linear backbone
    assert "[t-0.05](t-0.05/report.md)" in md and "[t-0.2](t-0.2/report.md)" in md
    assert table_row(md, "0.5")[-2] == "nan"  # uniformity (projector) of the last variant
    assert "Best kNN (backbone): `0.5` with 76.00 %." in md
    assert "](sweep.png)" in md


def test_sweep_axis_scale_follows_the_values():
    rows = [{"value": v, "run": "", "knn_top1": 0.5} for v in (0.05, 0.1, 0.2, 0.5)]
    assert sweep_figure("loss.temperature", rows).axes[0].get_xscale() == "log"
    narrow = [{"value": v, "run": "", "knn_top1": 0.5} for v in (0.1, 0.2, 0.5)]
    assert sweep_figure("loss.temperature", narrow).axes[0].get_xscale() == "linear"
    names = [{"value": v, "run": "", "knn_top1": 0.5} for v in ("clrun/mlp", "clrun/linear", None)]
    fig = sweep_figure("projector.name", names)
    assert fig.axes[0].get_xscale() == "linear"
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["clrun/mlp", "clrun/linear", "null"]


@pytest.mark.parametrize("values", [[], [0.1]])
def test_sweep_of_zero_or_one_variant(tmp_path, values):
    rows = [{"value": v, "run": str(tmp_path / "x")} for v in values]
    path = write_sweep_report(tmp_path / "s", "train.epochs", rows)
    assert path.exists() and (tmp_path / "s" / "sweep.csv").exists()
    assert_png(tmp_path / "s" / "sweep.png")


def add_dense(run: Path, final: bool = True) -> None:
    """The epoch records (and with ``final`` the summary) of ``run`` gain two dense evaluations' scores: patch
    kNN's mIoU falls while kNN top-1 (make_run's) rises, the patch features degrading under good global ones."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if line["kind"] == "epoch":
            e = line["epoch"]
            line.update(patch_knn_miou=0.5 - 0.05 * e, patch_knn_pixel_accuracy=0.9 - 0.02 * e,
                        seg_linear_miou=0.4 + 0.01 * e, seg_linear_pixel_accuracy=0.85)
    write_lines(run / "metrics.jsonl", lines)
    if final:
        summary = json.loads((run / "summary.json").read_text())
        summary.update(patch_knn_miou=0.2875, patch_knn_pixel_accuracy=0.8123, seg_linear_miou=0.45,
                       seg_linear_pixel_accuracy=0.86)
        (run / "summary.json").write_text(json.dumps(summary))


def legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_dense_mious_are_plotted_beside_knn_and_listed_in_percent(tmp_path):
    run = make_run(tmp_path / "dense")
    add_dense(run)
    records = read_run(run)
    fig = dense_figure(records)
    assert list(FIGURES).index("dense") == list(FIGURES).index("accuracy") + 1
    assert legend(fig) == ["patch knn mIoU", "seg linear mIoU", "kNN top-1 (backbone, global features)"]
    patch_knn = fig.axes[0].get_lines()[0]
    assert list(patch_knn.get_xdata()) == [1, 2, 3, 4]
    assert list(patch_knn.get_ydata()) == pytest.approx([45, 40, 35, 30])  # percent, per epoch
    assert not any("mIoU" in t for t in legend(accuracy_figure(records)))  # the accuracy plot stays top-1
    report = render(records, {"dense": run / "plots" / "dense.png"})  # the other plots: not needed here
    assert "### Dense evaluation" in report and "](plots/dense.png)" in report
    assert "falling while kNN holds" in report and "Gram anchoring" in report
    assert table_row(report, "patch knn mIoU (backbone)")[1:] == ["28.75 %", "final record"]
    assert table_row(report, "patch knn pixel accuracy (backbone)")[1:] == ["81.23 %", "final record"]
    assert table_row(report, "seg linear mIoU (backbone)")[1:] == ["45.00 %", "final record"]
    assert "| patch_knn_miou |" not in report  # once, in percent, not again among the other metrics


def test_no_miou_no_dense_plot_and_an_evaluations_miou_alone_is_a_star(tmp_path):
    assert dense_figure(read_run(make_run(tmp_path / "no-dense"))) is None
    run = make_run(tmp_path / "plain", eval_results={"seg_linear_miou": 0.4})
    fig = dense_figure(read_run(run))
    assert legend(fig) == ["seg linear mIoU", "kNN top-1 (backbone, global features)"]
    star = fig.axes[0].get_lines()[0]
    assert star.get_marker() == "*" and list(star.get_xdata()) == [4] and list(star.get_ydata()) == [pytest.approx(40)]
