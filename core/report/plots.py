"""The run report's plots, one function per PNG, each returning None when its data is absent.

Figures are built with ``matplotlib.figure.Figure`` directly, never pyplot: no global figure registry,
no GUI backend picked from the environment (a training machine has no display), and nothing leaks
between figures when the report is written from inside a training process. Saving a bare Figure to
PNG renders it with Agg.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clrun.run_folder import RunFolder
from clrun.report.space_plots import embedding_map_figure, retrieval_figure
from clrun.storage import remove, write_atomic
from clrun.report.records import (
    BRANCHES,
    RunRecords,
    accuracy_label,
    dense_label,
    evaluation_label,
    health_checks,
    health_value,
    is_accuracy,
    is_dense_miou,
    number,
    ordered_bases,
    ordered_dense_bases,
)

BRANCH_STYLE = {"backbone": "-", "projector": "--"}  # same colour per evaluation, the branch by line style
BRANCH_MARKER = {"backbone": "o", "projector": "s"}
DPI = 110


def save_figure(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()  # rendered in memory first, so a failed render never replaces a good PNG
    fig.savefig(buffer, format="png", dpi=DPI)
    write_atomic(path, buffer.getvalue(), "report")


def loss_figure(records: RunRecords) -> Figure | None:
    steps = _points(records.steps, "step", "loss")
    epochs = _points(records.epochs, "step", "loss")
    if not _any_finite(steps) and not _any_finite(epochs):
        return None
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if steps:
        ax.plot(*zip(*steps), lw=0.7, alpha=0.6, color="C0", label="loss (step)")
    if epochs:
        ax.plot(*zip(*epochs), "o", ms=5, color="C3", label="loss (epoch mean)")
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lr = _points(records.steps, "step", "lr")
    if _any_finite(lr):
        twin = ax.twinx()
        twin.plot(*zip(*lr), lw=1, color="C2", alpha=0.8, label="learning rate")
        twin.set_ylabel("learning rate")
        h, lab = twin.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    return fig


def accuracy_figure(records: RunRecords) -> Figure | None:
    scores = _Scores(records, is_accuracy)
    if not scores.any():
        return None
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, base in enumerate(ordered_bases(scores.keys())):
        for branch in BRANCHES:
            scores.draw(ax, base, branch, f"C{i % 10}", f"{evaluation_label(base)} ({branch})")
    ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Accuracy (backbone solid, projector dashed; points: final, stars: {RunFolder('.').evaluation.name})", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def dense_figure(records: RunRecords) -> Figure | None:
    """The dense evaluations' mIoU (``*_miou``) over epochs beside the global features' top-1 (kNN's where
    measured), on one percent axis: patch features that degrade while the global ones hold show as a
    falling mIoU under a flat accuracy. None when no mIoU was recorded."""
    dense = _Scores(records, is_dense_miou)
    if not dense.any():
        return None
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, base in enumerate(ordered_dense_bases(dense.keys())):
        for branch in BRANCHES:  # patch tokens are the backbone's: a projector's mIoU only if an evaluator gives one
            dense.draw(ax, base, branch, f"C{i % 10}", dense_label(base) + (" (projector)" if branch == "projector" else ""))
    accuracy = _Scores(records, is_accuracy)
    reference = next((b for b in ordered_bases(accuracy.keys()) if accuracy.has(b)), None)
    if reference is not None:
        accuracy.draw(ax, reference, "backbone", "0.35", f"{accuracy_label(reference)} (backbone, global features)",
                      style="-.")
    ax.set(xlabel="epoch", ylabel="score (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    beside = f" beside {accuracy_label(reference)} (grey)" if reference is not None else ""
    ax.set_title(f"Dense evaluation: patch features' mIoU{beside}; points: final, stars: "
                 f"{RunFolder('.').evaluation.name}", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


class _Scores:
    """The scores in [0, 1] of the keys ``wanted`` accepts, drawn in percent: per epoch (the epoch records), the
    final value (the summary's, at the last epoch) and `cl-run eval`'s (at the epoch it evaluated)."""

    def __init__(self, records: RunRecords, wanted: Callable[[str], bool]) -> None:
        self.final = _values(records.final, wanted)
        self.evaluated = _values((records.evaluation or {}).get("results"), wanted)
        self.curves = {k: _points(records.epochs, "epoch", k) for r in records.epochs for k in r if wanted(k)}
        self.last_epoch = _last_epoch(records)
        eval_epoch = number((records.evaluation or {}).get("epoch"))
        self.eval_epoch = eval_epoch if _finite(eval_epoch) else self.last_epoch

    def keys(self) -> set[str]:
        return {*self.curves, *self.final, *self.evaluated}

    def any(self) -> bool:
        return (any(map(_any_finite, self.curves.values()))
                or any(map(math.isfinite, [*self.final.values(), *self.evaluated.values()])))

    def has(self, key: str) -> bool:
        return _any_finite(self.curves.get(key, [])) or any(
            _finite(values.get(key)) for values in (self.final, self.evaluated))

    def draw(self, ax, base: str, branch: str, colour: str, label: str | None, style: str | None = None) -> None:
        key = base if branch == "backbone" else f"{base}_projector"
        fill = colour if branch == "backbone" else "white"
        # The label goes on the first artist drawn for this key only.
        if self.curves.get(key):
            xs, ys = zip(*self.curves[key])
            ax.plot(xs, [100 * y for y in ys], style or BRANCH_STYLE[branch], marker=".", color=colour, label=label)
            label = None
        # Final values as points: the summary's at the last epoch, `cl-run eval`'s (a star) at its epoch.
        if key in self.final and self.last_epoch is not None:
            ax.plot([self.last_epoch], [100 * self.final[key]], BRANCH_MARKER[branch], color=colour, mfc=fill, ms=7,
                    label=label)
            label = None
        if key in self.evaluated and self.eval_epoch is not None:
            ax.plot([self.eval_epoch], [100 * self.evaluated[key]], "*", color=colour, mfc=fill, ms=12, label=label)


def alignment_uniformity_figure(records: RunRecords) -> Figure | None:
    checks = health_checks(records)
    paths = {}
    for branch in BRANCHES:
        points = [(epoch, health_value(m, "uniformity", branch), health_value(m, "alignment", branch))
                  for epoch, m in checks]
        points = [p for p in points if _finite(p[1]) and _finite(p[2])]
        if points:
            paths[branch] = points
    if not paths:
        return None
    all_epochs = [p[0] for pts in paths.values() for p in pts]
    all_x = [p[1] for pts in paths.values() for p in pts]
    middle = (min(all_x) + max(all_x)) / 2
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    scatter = None
    for branch, points in paths.items():
        epochs, xs, ys = zip(*points)
        ax.plot(xs, ys, BRANCH_STYLE[branch], color="0.6", lw=1, zorder=1)
        scatter = ax.scatter(xs, ys, c=epochs, cmap="viridis", vmin=min(all_epochs), vmax=max(all_epochs),
                             marker=BRANCH_MARKER[branch], s=40, edgecolors="k", linewidths=0.4, zorder=2,
                             label=branch)
        ends = [(0, "start")] + ([(len(points) - 1, "end")] if len(points) > 1 else [])
        for i, what in ends:
            # Text grows towards the middle of the plot, so it stays inside the axes.
            right_half = xs[i] > middle
            ax.annotate(f"{branch} {what} (epoch {epochs[i]})", (xs[i], ys[i]), textcoords="offset points",
                        xytext=(-8 if right_half else 8, 6 if what == "start" else -12), fontsize="small",
                        ha="right" if right_half else "left")
    bar = fig.colorbar(scatter, ax=ax, label="epoch")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    ax.set(xlabel="uniformity (lower = more uniform; 0 = collapsed)",
           ylabel="alignment (lower = positives closer)")
    # Why say it: the plane reads unlike most plots, and both collapse (uniformity near 0) and a lack of
    # invariance (high alignment) are failures a reader should spot at a glance.
    ax.set_title("Alignment vs uniformity (Wang & Isola): lower-left is better", fontsize="medium")
    ax.margins(0.12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def health_figure(records: RunRecords) -> Figure | None:
    checks = health_checks(records)
    panels = (
        ("std_sqrt_d", ("std_sqrt_d",), "std · √d (≈1 healthy, 0 collapsed)"),
        ("rankme", ("rankme",), "RankMe (effective rank)"),
        ("cosines", ("pos_cosine", "neg_cosine"), "cosine: positive (solid) vs negative (dotted)"),
    )
    if not any(_finite(health_value(m, name, b)) for _, m in checks for _, names, _ in panels
               for name in names for b in BRANCHES):
        return None
    fig = Figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (panel, names, title) in zip(axes, panels):
        for colour, branch in zip(("C0", "C1"), BRANCHES):
            for name in names:
                curve = [(e, health_value(m, name, branch)) for e, m in checks]
                curve = [(e, v) for e, v in curve if v is not None]
                if not _any_finite(curve):
                    continue
                style = ":" if name == "neg_cosine" else BRANCH_STYLE[branch]
                label = branch if panel != "cosines" else f"{branch} {name.split('_')[0]}"
                ax.plot(*zip(*curve), style, marker=".", color=colour, label=label)
        if panel == "std_sqrt_d":
            ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize("medium")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return fig


def similarities_figure(records: RunRecords) -> Figure | None:
    with_hists = [h for h in records.health if isinstance(h.get("histograms"), dict)]
    if not with_hists:
        return None
    chosen = [with_hists[0]] if len(with_hists) == 1 else [with_hists[0], with_hists[-1]]
    branches = [b for b in BRANCHES if any(_histogram(h["histograms"].get(b)) for h in chosen)]
    if not branches:
        return None
    fig = Figure(figsize=(5 * len(chosen), 3.2 * len(branches)), layout="constrained")
    axes = fig.subplots(len(branches), len(chosen), squeeze=False, sharex=True)
    for row, branch in enumerate(branches):
        for col, check in enumerate(chosen):
            ax = axes[row][col]
            ax.set_title(f"{branch}, epoch {check.get('epoch', '?')}", fontsize="medium")
            hist = _histogram(check["histograms"].get(branch))
            if hist is None:
                ax.text(0.5, 0.5, "no histogram", ha="center", transform=ax.transAxes)
                continue
            edges, positive, negative = hist
            # Densities, not counts: there are n positive pairs but n·(n-1) negative ones.
            ax.stairs(_density(negative, edges), edges, fill=True, alpha=0.45, color="C3", label="negative pairs")
            ax.stairs(_density(positive, edges), edges, fill=True, alpha=0.45, color="C0", label="positive pairs")
            ax.set(xlim=(edges[0], edges[-1]))
            ax.grid(alpha=0.3)
            if row == len(branches) - 1:
                ax.set_xlabel("cosine similarity")
            if col == 0:
                ax.set_ylabel("density")
    axes[0][0].legend(fontsize="small", loc="upper left")
    return fig


def token_maps_figure(records: RunRecords) -> Figure | None:
    """Per image (rows): the image, the patch tokens' 3-component PCA as RGB, and the class token's
    last-block attention per head (up to 6 heads), each map upsampled to the image's size."""
    maps = records.token_maps
    if not maps or "images" not in maps or "pca" not in maps:
        return None
    images, pca = maps["images"], maps["pca"]
    attention = maps.get("attention")
    heads = 0 if attention is None else min(attention.shape[1], 6)
    columns = 2 + heads
    fig = Figure(figsize=(1.6 * columns, 1.6 * len(images)), layout="constrained")
    axes = fig.subplots(len(images), columns, squeeze=False)
    for row, image in enumerate(images):
        picture = image.transpose(1, 2, 0)
        extent = (0, picture.shape[1], picture.shape[0], 0)  # maps stretched over the image's pixels
        panels = [(picture[..., 0] if picture.shape[2] == 1 else picture, "image", "gray"), (pca[row], "patch PCA", None)]
        panels += [(attention[row, h], f"attention, head {h + 1}", "inferno") for h in range(heads)]
        for col, (data, title, cmap) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(data, cmap=cmap, extent=extent, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize="small")
    return fig


# name -> builder, in the order the report shows them
FIGURES: dict[str, Callable[[RunRecords], Figure | None]] = {
    "loss": loss_figure,
    "accuracy": accuracy_figure,
    "dense": dense_figure,
    "alignment_uniformity": alignment_uniformity_figure,
    "health": health_figure,
    "similarities": similarities_figure,
    "token_maps": token_maps_figure,
    "embedding_map": lambda records: embedding_map_figure(records.space),
    "retrievals": lambda records: retrieval_figure(records.space),
}


def write_plots(records: RunRecords, directory: Path) -> dict[str, Path]:
    """Every plot whose data exists, as ``directory/<name>.png``; a plot whose data is gone is removed,
    so the folder never shows a picture of an earlier state than the report beside it."""
    written = {}
    for name, build in FIGURES.items():
        path = directory / f"{name}.png"
        fig = build(records)
        if fig is None:
            remove(path, "report")
            continue
        save_figure(fig, path)
        written[name] = path
    return written


def _points(lines: list[dict[str, Any]], x: str, y: str) -> list[tuple[float, float]]:
    """(x, y) of the lines holding both; NaN stays (matplotlib draws it as a gap)."""
    out = []
    for line in lines:
        xv, yv = number(line.get(x)), number(line.get(y))
        if xv is not None and yv is not None and math.isfinite(xv):
            out.append((xv, yv))
    return out


def _any_finite(points) -> bool:
    return any(math.isfinite(y) for _, y in points)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _values(record: Any, wanted: Callable[[str], bool]) -> dict[str, float]:
    if not isinstance(record, dict):
        return {}
    return {k: x for k, v in record.items() if wanted(k) and (x := number(v)) is not None}


def _last_epoch(records: RunRecords) -> float | None:
    for candidate in ((records.final or {}).get("epoch"), *(r.get("epoch") for r in reversed(records.epochs))):
        if _finite(number(candidate)):
            return number(candidate)
    return None


def _histogram(hist: Any) -> tuple[list[float], list[float], list[float]] | None:
    if not isinstance(hist, dict):
        return None
    edges, positive, negative = (hist.get(k) for k in ("edges", "positive", "negative"))
    if not all(isinstance(v, list) for v in (edges, positive, negative)):
        return None
    if len(edges) < 2 or len(positive) != len(edges) - 1 or len(negative) != len(edges) - 1:
        return None
    values = [[number(v) for v in seq] for seq in (edges, positive, negative)]
    if any(v is None or not math.isfinite(v) for seq in values for v in seq):
        return None
    return values[0], values[1], values[2]


def _density(counts: list[float], edges: list[float]) -> list[float]:
    total = sum(counts)
    if total <= 0:
        return [0.0] * len(counts)
    return [c / (total * (edges[i + 1] - edges[i])) if edges[i + 1] > edges[i] else 0.0 for i, c in enumerate(counts)]
