"""The console: one compact line per epoch (``-v``: every metric) and a final summary table."""

from __future__ import annotations

from pathlib import Path

import clrun
from clrun.training.callbacks.reporting import compact, results_table

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"


def epoch_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("epoch ")]


def test_the_epoch_line_is_compact_and_verbose_shows_every_metric(tmp_path, capsys):
    recipe = clrun.load_recipe(TINY, [f"run.dir={tmp_path}", "train.epochs=1"])
    clrun.train(recipe)
    compact_line = epoch_lines(capsys.readouterr().out)[0]
    clrun.train(recipe, verbose=True)
    verbose_line = epoch_lines(capsys.readouterr().out)[0]
    # A word per metric name and one per value: the compact line names only what a person follows.
    shown = compact_line.split()[2::2]
    assert shown == ["loss", "lr", "images_per_s", "data_wait", "contrastive_acc", "std_sqrt_d_projector"]  # NT-Xent names its main metric
    assert len(verbose_line.split()) > 3 * len(compact_line.split())
    for name in ("uniformity_backbone", "rankme_projector", "epoch_time_s"):
        assert f" {name} " in verbose_line


def test_the_losss_main_metric_and_the_watched_branch_are_shown():
    class Loss:
        main_metric = "contrastive_acc"

    class Parts:
        loss_fn = Loss()

    class Run:
        parts = Parts()
        recipe = clrun.load_recipe(TINY, ["health.alarm.branch=backbone"])

    metrics = {"loss": 1.0, "lr": 0.1, "images_per_s": 5.0, "contrastive_acc": 0.5, "logit_entropy": 2.0,
               "std_sqrt_d_backbone": 0.9, "std_sqrt_d_projector": 0.8, "epoch_time_s": 3.0}
    assert list(compact(Run(), metrics)) == ["loss", "lr", "images_per_s", "contrastive_acc", "std_sqrt_d_backbone"]


def test_the_summary_table_puts_branches_side_by_side():
    lines = results_table({"loss": 2.0, "knn_top1": 0.8187, "knn_top1_projector": 0.7849, "linear_top1": 0.85})
    assert lines[0].split() == ["evaluation", "backbone", "projector"]
    assert lines[1].split() == ["knn_top1", "81.87%", "78.49%"]
    assert lines[2].split() == ["linear_top1", "85.00%", "-"]
    assert results_table({"loss": 1.0}) == []


def test_the_summary_table_shows_dense_scores_in_percent_like_accuracies():
    results = {"loss": 2.0, "knn_top1": 0.8187, "patch_knn_miou": 0.2875, "patch_knn_pixel_accuracy": 0.8123,
               "seg_linear_miou": 0.45, "seg_linear_pixel_accuracy": 0.86, "lr": 0.001}
    lines = results_table(results)
    assert [line.split() for line in lines[1:]] == [
        ["knn_top1", "81.87%", "-"], ["patch_knn_miou", "28.75%", "-"], ["patch_knn_pixel_accuracy", "81.23%", "-"],
        ["seg_linear_miou", "45.00%", "-"], ["seg_linear_pixel_accuracy", "86.00%", "-"]]
    assert len({len(line) for line in lines}) == 1  # the longest name widens the column: the values stay aligned
