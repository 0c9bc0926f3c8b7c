"""The sweep report: one row per variant of a swept recipe key, as ``sweep.csv`` (every column, for
further analysis), ``sweep.md`` (the table a reader compares, linking each run's own report) and
``sweep.png`` (accuracy, alignment and uniformity against the swept value)."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from clrun.report.plots import BRANCH_MARKER, BRANCH_STYLE, save_figure
from clrun.run_folder import RunFolder
from clrun.storage import make_folder, write_atomic
from clrun.report.records import BRANCHES, evaluation_label, health_value, number, ordered_bases

FIXED_COLUMNS = ("value", "run")


def write_sweep_report(sweep_dir: Path, key: str, rows: list[dict[str, Any]]) -> Path:
    """``sweep.csv``, ``sweep.png`` and ``sweep.md`` in ``sweep_dir``; returns the path of ``sweep.md``.
    Rows keep the order given (the sweep's own); the plot sorts numeric values along its axis."""
    sweep_dir = make_folder(Path(sweep_dir), "sweep")
    write_atomic(sweep_dir / "sweep.csv", sweep_csv(rows), "sweep")
    save_figure(sweep_figure(key, rows), sweep_dir / "sweep.png")
    path = sweep_dir / "sweep.md"
    write_atomic(path, sweep_markdown(sweep_dir, key, rows), "sweep")
    return path


def sweep_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(FIXED_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: scalar_text(row[c]) if c == "value" else _csv_value(row[c]) for c in row})
    return buffer.getvalue()


def sweep_markdown(sweep_dir: Path, key: str, rows: list[dict[str, Any]]) -> str:
    bases = ordered_bases({k for row in rows for k in row})
    accuracy_columns = [(f"{evaluation_label(b)} {branch} %", b if branch == "backbone" else f"{b}_projector")
                        for b in bases for branch in BRANCHES]
    accuracy_columns = [(title, k) for title, k in accuracy_columns if any(k in row for row in rows)]
    header = [f"`{key}`", *(t for t, _ in accuracy_columns)]
    header += [f"{m} ({b})" for b in BRANCHES for m in ("alignment", "uniformity")]
    header.append("report")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [scalar_text(row.get("value"))]
        cells += [_percent(number(row.get(k))) for _, k in accuracy_columns]
        cells += [_plain(health_value(row, m, b)) for b in BRANCHES for m in ("alignment", "uniformity")]
        cells.append(_report_link(sweep_dir, row.get("run")))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    text = [f"# Sweep over `{key}`",
            f"{len(rows)} variant{'s' if len(rows) != 1 else ''}. Accuracies are top-1 in %; alignment (lower = "
            "positives closer) and uniformity (lower = more uniform, 0 = collapsed) are from the last health check.",
            "\n".join(lines)]
    best = _best(rows, bases)
    if best:
        text.append(best)
    text += ["![Sweep: accuracy, alignment and uniformity against the swept value](sweep.png)",
             "All columns: [sweep.csv](sweep.csv)."]
    return "\n\n".join(text) + "\n"


def sweep_figure(key: str, rows: list[dict[str, Any]]) -> Figure:
    """Accuracy (top), alignment and uniformity (bottom) against the swept value: a log axis when the
    values are positive and span 10x or more (learning rates, temperatures), categories when not numeric."""
    xs, scale, labels = x_axis([row.get("value") for row in rows])
    order = sorted(range(len(rows)), key=lambda i: xs[i]) if scale != "categorical" else list(range(len(rows)))
    rows, xs = [rows[i] for i in order], [xs[i] for i in order]
    fig = Figure(figsize=(9, 7), layout="constrained")
    axes = fig.subplot_mosaic([["accuracy", "accuracy"], ["alignment", "uniformity"]], sharex=True)
    bases = ordered_bases({k for row in rows for k in row})
    # Categories have no order between them: markers only, a line would suggest a trend.
    line = {b: "none" if scale == "categorical" else BRANCH_STYLE[b] for b in BRANCHES}
    for i, base in enumerate(bases):
        for branch in BRANCHES:
            key_ = base if branch == "backbone" else f"{base}_projector"
            ys = [100 * v if (v := number(row.get(key_))) is not None else math.nan for row in rows]
            if any(math.isfinite(y) for y in ys):
                axes["accuracy"].plot(xs, ys, linestyle=line[branch], marker=BRANCH_MARKER[branch],
                                      color=f"C{i % 10}", label=f"{evaluation_label(base)} ({branch})")
    for name in ("alignment", "uniformity"):
        for colour, branch in zip(("C0", "C1"), BRANCHES):
            ys = [v if (v := health_value(row, name, branch)) is not None else math.nan for row in rows]
            if any(math.isfinite(y) for y in ys):
                axes[name].plot(xs, ys, linestyle=line[branch], marker=BRANCH_MARKER[branch], color=colour,
                                label=branch)
    axes["accuracy"].set(ylabel="top-1 accuracy (%)", title=f"Sweep over {key}")
    axes["alignment"].set(ylabel="alignment (lower = positives closer)", xlabel=key)
    axes["uniformity"].set(ylabel="uniformity (lower = more uniform)", xlabel=key)
    for name, ax in axes.items():
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, f"no {name} recorded", ha="center", va="center", transform=ax.transAxes, color="0.4")
        if scale == "log":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-1 3x10^-1 ... would overlap
    # Ticks at the swept values themselves, labelled as the recipe spells them (few values: a sweep).
    if scale == "categorical" or len(set(xs)) <= 12:
        ticks = dict(zip(xs, labels))
        for name in ("alignment", "uniformity"):
            axes[name].set_xticks(list(ticks), list(ticks.values()))
    return fig


def x_axis(values: list[Any]) -> tuple[list[float], str, list[str]]:
    """Positions of the swept values, the axis scale (``log``, ``linear`` or ``categorical``) and labels."""
    numbers = [number(v) for v in values]
    labels = [scalar_text(v) for v in values]
    if values and all(x is not None and math.isfinite(x) for x in numbers):
        positive = all(x > 0 for x in numbers)
        scale = "log" if positive and max(numbers) / min(numbers) >= 10 else "linear"
        return numbers, scale, labels
    return [float(i) for i in range(len(values))], "categorical", labels


def scalar_text(value: Any) -> str:
    """A swept value as the recipe would spell it (YAML: ``null``, ``true``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def _percent(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}" if math.isfinite(x) else str(x)


def _plain(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _report_link(sweep_dir: Path, run: Any) -> str:
    if not run:
        return "n/a"
    # Relative to the sweep folder, so the links survive moving the whole tree. Always the report: a run
    # writes it when it ends, also when it fails, so a link to a missing one means the run never ended.
    report = RunFolder(str(run)).report
    link = Path(os.path.relpath(report.resolve(), sweep_dir.resolve())).as_posix()
    return f"[{Path(str(run)).name}]({link})"


def _best(rows: list[dict[str, Any]], bases: list[str]) -> str:
    """The variant with the best backbone accuracy on the first evaluation (the standard order)."""
    for base in bases:
        scored = [(v, row) for row in rows if (v := number(row.get(base))) is not None and math.isfinite(v)]
        if scored:
            value, row = max(scored, key=lambda s: s[0])
            return (f"Best {evaluation_label(base)} (backbone): `{scalar_text(row.get('value'))}` "
                    f"with {100 * value:.2f} %.")
    return ""
