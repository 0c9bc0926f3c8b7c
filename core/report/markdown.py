"""The run report's text told in prose and tables, for a reader who has not seen the code.

Every section degrades to a sentence when its data is absent (a crashed or halted run still gets a
report, and the report says what it could not show and why), and every number shown is the one the
files hold: nothing here re-computes a metric.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from clrun.run_folder import RunFolder
from clrun.report.records import (
    BRANCHES,
    HEALTH_METRICS,
    RunRecords,
    accuracy_label,
    dense_label,
    dense_score,
    epoch_of,
    evaluation_label,
    health_checks,
    health_value,
    is_accuracy,
    number,
    ordered_bases,
    ordered_dense_bases,
    recipe_get,
    results,
)

LAYOUT = RunFolder(".")  # the run folder's file names, for the report's words about them
EVAL_SOURCE = LAYOUT.evaluation.name
# Above this share of the step time spent waiting for data, the report calls the loader the bottleneck.
DATA_BOUND = 0.1

# What each missing file costs the reader (the recipe is always there: the run wrote it first).
MISSING_MEANS = {
    LAYOUT.recipe.name: "the setup below is unknown",
    LAYOUT.metrics.name: "no loss or accuracy curves",
    LAYOUT.summary.name: "the run did not finish (still running, crashed or killed): results are its last recorded epoch's",
    LAYOUT.health.name: "no health checks with similarity histograms (health monitor off, or no check ran yet)",
}

HEALTHY_RANGE = {
    "std_sqrt_d": "≈ 1; 0 = collapsed",
    "uniformity": "< 0, lower = more uniform; 0 = collapsed",
    "rankme": "high (up to the dimension); 1 = collapsed",
    "alignment": "low (0 to 4); lower = positives closer",
    "pos_cosine": "high, well above neg_cosine",
    "neg_cosine": "low, well below pos_cosine",
}

CAPTIONS = {
    "loss": ("Training loss", "Loss per step (thin line) and per-epoch mean (points); "
                              "learning rate on the right axis."),
    "accuracy": ("Accuracy", "Top-1 accuracy over epochs: backbone solid, projector dashed, one colour per "
                             f"evaluation; final values as points, {EVAL_SOURCE}'s as stars."),
    "dense": ("Dense evaluation", "Mean IoU of the dense evaluations of the patch features (per-pixel labels "
                                  "predicted from the patch tokens; one colour per evaluation) over epochs, beside "
                                  "the global features' top-1 accuracy (kNN's where measured; grey, dash-dot) on "
                                  f"the same percent axis; final values as points, {EVAL_SOURCE}'s as stars. Dense "
                                  "mIoU falling while kNN holds means the patch features are degrading while the "
                                  "global representation is not: the loss of local detail over a long run that "
                                  "Gram anchoring is meant to prevent."),
    "alignment_uniformity": ("Alignment vs uniformity", "Wang & Isola's plane, one trajectory per branch, "
                             "coloured by epoch: lower-left is better; uniformity near 0 means collapse."),
    "health": ("Representation health", "std·√d (≈ 1 healthy, 0 collapsed), RankMe (effective rank) and the "
                                        "mean cosine of positive vs negative pairs, per health check."),
    "similarities": ("Similarity distributions", "Cosine similarity of positive pairs (two views of one image) "
                     "vs negative pairs (different images) at the first and last health check: well separated is "
                     "good; both piled up near 1 is collapse."),
    "token_maps": ("Token maps", "For a few training images: the first three principal components of the patch "
                   "features as RGB (patches the model represents alike get alike colours) and the class token's "
                   "attention in the last block, per head (a model that found the object attends to it)."),
    "embedding_map": ("Embedding map", "A fixed sample of the test images' backbone features before training and at "
                      "the last evaluation, laid out in 2-D (UMAP where umap-learn is installed, else the first two "
                      "principal components), coloured by class: classes that form their own regions are what a "
                      "kNN or linear probe can separate; one blob of mixed colours is a representation that "
                      "has not learned them (or has collapsed)."),
    "retrievals": ("Nearest neighbours", "Test images (first column, one per class) and their nearest training "
                   "images by cosine similarity of the backbone features at the last evaluation: framed green "
                   "when of the query's class, red (✗) when not."),
}

def render(records: RunRecords, plots: dict[str, Path], at: Path | None = None) -> str:
    """The report's text; its links are relative to ``at``, the folder it is written in (the run folder
    unless the report is written elsewhere)."""
    at = records.directory if at is None else Path(at)
    sections = [
        f"# Run report: `{records.directory.resolve().name or records.directory}`",
        halted_notice(records),
        setup(records),
        initialized_from(records),
        resumes(records),
        missing(records),
        results_section(records),
        branch_comparison(records),
        health(records),
        plots_section(records, plots, at),
        files_section(records, at),
    ]
    return "\n\n".join(s for s in sections if s).rstrip() + "\n"


def initialized_from(records: RunRecords) -> str:
    """Where the run's initial weights came from (its init: section), per part, with the file's SHA-256."""
    if not records.init:
        return ""
    rows = []
    for p in records.init.get("parts", []):
        if not isinstance(p, dict):
            continue
        fit = f"{p.get('loaded', 0)} tensors" + "".join(
            f", {len(p[k])} {what}" for k, what in (("missing", "missing"), ("unexpected", "unused"),
                                                   ("mismatched", "misshapen"), ("resized", "resampled")) if p.get(k))
        digest = str(p.get("sha256") or "")[:12] or (p.get("pending") or "")
        rows.append((f"`{p.get('part')}`", f"`{p.get('source')}`", f"{p.get('layout')}, {p.get('network')}", fit, digest))
    licences = records.init.get("licences") or {}
    notes = "".join(f"\n\n> warning: {_oneline(str(w))}" for w in records.init.get("warnings", []))
    licence = (f"\n\nLicences of these weights (an encoder trained from them derives from them): "
               + "; ".join(f"`{k}`: {v}" for k, v in licences.items())) if licences else ""
    return ("## Initialized from\n\n" + _table(("Part", "Source", "Layout, network", "Loaded", "SHA-256"), rows)
            + licence + notes)


def resumes(records: RunRecords) -> str:
    """Each resume that changed the recipe: the setup above is the latest; these are the earlier steps."""
    if not records.resumes:
        return ""
    lines = []
    for r in records.resumes:
        how = "with --allow-changes" if r.get("allowed") else "(changes that do not alter the training)"
        changed = "; ".join(f"`{c.get('key')}` {c.get('was')!r} → {c.get('now')!r}" for c in r.get("changes", []))
        lines.append(f"- resumed at step {r.get('step', '?')} (epoch {r.get('epoch', '?')}) {how}: {changed}")
    return ("## Resumes\n\nThe run was resumed with a changed recipe; the setup above is the one in force at "
            "the end.\n\n" + "\n".join(lines))


def halted_notice(records: RunRecords) -> str:
    if not records.halted:
        return ""
    return f"> **The run was halted:** {_oneline(records.halted)}"


def setup(records: RunRecords) -> str:
    r = records.recipe
    final = records.final or {}
    last = records.epochs[-1] if records.epochs else {}
    parts = [
        f"Backbone `{recipe_get(r, 'backbone.name') or 'unknown'}`",
        f"projector `{recipe_get(r, 'projector.name') or 'none'}`",
        f"loss `{recipe_get(r, 'loss.name') or 'unknown'}`",
    ]
    if recipe_get(r, "data.dataset.name"):
        batch = recipe_get(r, "data.batch_size")
        parts.append(f"data `{recipe_get(r, 'data.dataset.name')}`" + (f" in batches of {batch}" if batch else ""))
    if recipe_get(r, "optimizer.name"):
        lr = recipe_get(r, "optimizer.lr")
        parts.append(f"optimizer `{recipe_get(r, 'optimizer.name')}`" + (f" (lr {lr})" if lr is not None else ""))
    text = ", ".join(parts) + "."
    planned = recipe_get(r, "train.epochs")
    reached = next((x for x in (number(final.get("epoch")), number(last.get("epoch"))) if _ok(x)), None)
    if reached is not None:
        text += f" Trained for {int(reached)}" + (f" of {planned}" if planned is not None else "") + " epochs"
    elif planned is not None:
        text += f" Planned for {planned} epochs; no epoch was recorded"
    else:
        text += " No epoch was recorded"
    # A run that died mid-epoch has step records past its last epoch record: the furthest one counts.
    step = number(final.get("step"))
    if not _ok(step):
        seen = [x for x in (number(last.get("step")), number((records.steps or [{}])[-1].get("step"))) if _ok(x)]
        step = max(seen) if seen else None
    text += f" ({int(step)} steps)" if step is not None else ""
    wall = number(final.get("wall_time_s"))
    text += f" in {_duration(wall)} of wall time." if _ok(wall) else "."
    speeds = [x for e in records.epochs if _ok(x := number(e.get("images_per_s")))]
    if speeds:
        text += f" Throughput: {sum(speeds) / len(speeds):,.0f} images/s on average."
    text += data_stall(records)
    return "## Setup\n\n" + text


def data_stall(records: RunRecords) -> str:
    """The share of the steps' time spent waiting for data, and what to do when the loader is the bottleneck."""
    waits = [x for e in records.epochs if _ok(x := number(e.get("data_wait")))]
    if not waits:
        return ""
    wait = sum(waits) / len(waits)
    text = f" The steps waited for data {100 * wait:.1f}% of the time"
    if wait > DATA_BOUND:
        return text + (" (the data loader is the bottleneck: raise `data.num_workers`, or read the data from "
                       "shards: `cl-run shards`).")
    return text + " (the model is the bottleneck)."


def missing(records: RunRecords) -> str:
    lines = [f"- `{name}` is missing: {MISSING_MEANS.get(name, 'not shown')}." for name in records.missing]
    lines += [f"- {p}." for p in records.problems]
    return "## Missing data\n\n" + "\n".join(lines) if lines else ""


def results_section(records: RunRecords) -> str:
    values = results(records)
    from_eval = set(((records.evaluation or {}).get("results") or {}))
    source = "final record" if records.final is not None else "last epoch"
    rows = []
    # Scores in [0, 1] in percent: the accuracies, then the dense evaluations' mIoU and pixel accuracy.
    for base, label in ([(b, accuracy_label(b)) for b in ordered_bases(values)]
                        + [(b, dense_label(b)) for b in ordered_dense_bases(values)]):
        for key in (base, f"{base}_projector"):
            if key in values:
                branch = "projector" if key.endswith("_projector") else "backbone"
                rows.append((f"{label} ({branch})", f"{_percent(values[key])} %",
                             EVAL_SOURCE if key in from_eval else source))
    skip = {"epoch", "step", "wall_time_s"}
    for key, value in values.items():
        if is_accuracy(key) or dense_score(key) or key in skip or _health_key(key, values):
            continue
        rows.append((key, _number(value), EVAL_SOURCE if key in from_eval else source))
    if not rows:
        return "## Results\n\nNo results were recorded."
    note = ""
    if records.evaluation:
        note = (f"\n\nValues marked {EVAL_SOURCE} come from `cl-run eval` on `{records.evaluation.get('checkpoint', '?')}`"
                f" (epoch {records.evaluation.get('epoch', '?')}) and replace the training-time ones.")
    return "## Results\n\n" + _table(("Metric", "Value", "Source"), rows) + note


def branch_comparison(records: RunRecords) -> str:
    values = results(records)
    rows, diffs = [], {}
    for base in ordered_bases(values):
        backbone, projector = values.get(base), values.get(f"{base}_projector")
        diff = None
        if _ok(backbone) and _ok(projector):
            diff = 100 * (backbone - projector)
            diffs[base] = diff
        rows.append((evaluation_label(base), _percent(backbone), _percent(projector),
                     f"{diff:+.2f}" if diff is not None else "n/a"))
    title = "## Backbone vs projector\n\n"
    if not rows:
        return title + "No accuracy was measured, so the branches cannot be compared."
    return title + _table(("Evaluation", "Backbone %", "Projector %", "Difference (points)"), rows) + \
        "\n\n" + _verdict(diffs)


def _verdict(diffs: dict[str, float]) -> str:
    """One sentence: which branch to use downstream. The projector is normally discarded after training;
    the numbers say whether that is right for this run."""
    if not diffs:
        return "No evaluation has finite values for both branches, so neither can be called better."
    named = lambda bases: ", ".join(evaluation_label(b) for b in bases)  # noqa: E731
    better = [b for b, d in diffs.items() if d >= 0.005]
    worse = [b for b, d in diffs.items() if d <= -0.005]
    if better and not worse:
        return (f"The backbone features beat the projector outputs on {named(better)} (by up to "
                f"{max(diffs[b] for b in better):.2f} points): use the backbone for downstream tasks, as usual.")
    if worse and not better:
        return (f"The projector outputs beat the backbone features on {named(worse)} (by up to "
                f"{-min(diffs[b] for b in worse):.2f} points): unusual; for downstream tasks the projector "
                f"outputs serve better here (or try a shallower projector or a longer run).")
    if not better and not worse:
        return "Backbone and projector are equally accurate: either serves downstream; the backbone is the smaller."
    # Mixed: the linear probe is the standard measure of a representation, so it decides when present.
    decider = next(b for b in ("linear_top1", "finetune_top1", "knn_top1", *diffs) if b in diffs)
    winner = "backbone" if diffs[decider] > 0 else "projector"
    return (f"Mixed: the backbone is better on {named(better)}, the projector on {named(worse)}; by the "
            f"{evaluation_label(decider)} the {winner} is the better choice for downstream use.")


def health(records: RunRecords) -> str:
    title = "## Health\n\n"
    checks = health_checks(records)
    parts = []
    if checks:
        epoch, last = checks[-1]
        rows = []
        for name in HEALTH_METRICS:
            values = [health_value(last, name, b) for b in BRANCHES]
            if any(v is not None for v in values):
                rows.append((name, *(_number(v) if v is not None else "n/a" for v in values), HEALTHY_RANGE[name]))
        parts.append(f"Last health check: epoch {epoch} ({len(checks)} check{'s' if len(checks) != 1 else ''} in all)."
                     + ("\n\n" + _table(("Metric", "Backbone", "Projector", "Healthy range"), rows) if rows else ""))
    else:
        parts.append("No health check was recorded.")
    parts.append(_alarm(records))
    return title + "\n\n".join(p for p in parts if p)


def _alarm(records: RunRecords) -> str:
    seen: dict[str, list[int]] = {}
    fired: list[str] = []
    branch = None
    for check in records.health:
        alarm = check.get("alarm") if isinstance(check.get("alarm"), dict) else {}
        branch = alarm.get("branch") or branch
        for signal in alarm.get("signals") or []:
            seen.setdefault(str(signal), []).append(epoch_of(check))
        if alarm.get("fired") and str(alarm["fired"]) not in fired:
            fired.append(str(alarm["fired"]))
    lines = []
    watching = f" (watching the {branch})" if branch else ""
    if seen:
        described = "; ".join(f"{name} at epoch{'s' if len(e) > 1 else ''} {', '.join(map(str, e))}"
                              for name, e in seen.items())
        lines.append(f"- Collapse alarm{watching}: signals beyond threshold: {described}.")
    elif records.health:
        lines.append(f"- Collapse alarm{watching}: no signal beyond its threshold in {len(records.health)} checks.")
    lines += [f"- Alarm fired: {_oneline(m)}" for m in fired]
    if records.health and not fired:
        lines.append("- The alarm never fired.")
    if records.halted:
        lines.append(f"- **Run halted:** {_oneline(records.halted)}")
    return "\n".join(lines)


def plots_section(records: RunRecords, plots: dict[str, Path], at: Path) -> str:
    if not plots:
        return "## Plots\n\nNo plot could be drawn: no curve, health check or accuracy was recorded."
    blocks = []
    for name, path in plots.items():
        heading, caption = CAPTIONS.get(name, (name, ""))
        link = Path(os.path.relpath(path, at)).as_posix()  # relative: the folder can move
        blocks.append(f"### {heading}\n\n{caption}\n\n![{heading}]({link})")
    return "## Plots\n\n" + "\n\n".join(blocks)


def files_section(records: RunRecords, at: Path) -> str:
    lines = [f"- [{name}]({Path(os.path.relpath(records.directory / name, at)).as_posix()}): {what}"
             for name, what in RunFolder.FILES.items() if (records.directory / name).exists()]
    return "## Files\n\n" + "\n".join(lines) if lines else ""


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: object) -> str:
    return _oneline(str(text)).replace("|", "\\|")


def _oneline(text: str) -> str:
    return " ".join(str(text).split())


def _ok(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _percent(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}" if math.isfinite(x) else str(x)  # NaN shows as "nan": the run really measured it


def _number(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:,.0f}"


def _health_key(key: str, values: dict[str, float]) -> bool:
    """A health metric (shown in the Health table instead). A bare name is one only when no
    ``_backbone`` twin exists: otherwise it is the loss's own (e.g. its training batches' ``pos_cosine``)."""
    if any(key in (f"{m}_backbone", f"{m}_projector") for m in HEALTH_METRICS):
        return True
    return key in HEALTH_METRICS and f"{key}_backbone" not in values


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
