"""Reporting: the machine's description, Markdown tables, the verdict line, and RESULTS.md sections."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from common import REPO, median, spread


def machine() -> str:
    """The machine, in one line: CPU and core count, GPU, Python and torch versions, the date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def describe(args: argparse.Namespace, cfg: dict[str, Any]) -> str:
    """What was trained and how it was timed, in one line under the table's title."""
    return (f"{cfg['backbone']['name']}, batch {cfg['data']['batch_size']}, {args.precision}, on {args.device}; "
            f"{args.steps} timed steps after {args.warmup} warm-up steps; median of {args.repeats} interleaved runs "
            "per side.")


def summary_table(results: dict[str, list[dict[str, float]]], columns: list[tuple[str, str]] = ()) -> list[str]:
    """One row per side: median images/s, its range over the repetitions, then the median of each
    ``(label, key)`` column."""
    header = ["side", "images/s (median)", "range", *(label for label, _ in columns)]
    return table(header, [[name, median(runs, "images_per_s"), spread(runs, "images_per_s"),
                           *(median(runs, key) for _, key in columns)] for name, runs in results.items()])


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return "-" if v is None else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]


def verdict(what: str, shown: str, target: str, met: bool) -> str:
    return f"**{what}: {shown}** (target {target}): {'met' if met else 'NOT met'}"


def report(args: argparse.Namespace, key: str, title: str, lines: list[str]) -> None:
    """Print a result block; with ``--results``, also replace this benchmark's section of that file."""
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    block = [f"### {title}", "", f"Measured by `{command}` on {machine()}.", "", *lines]
    print("\n".join(block), flush=True)
    if args.results:
        write_section(args.results, f"{key} ({torch.device(args.device).type})", "\n".join(block))


def write_section(path: Path, key: str, block: str) -> None:
    """Replace the text between ``<!-- key: start -->`` and ``<!-- key: end -->``, or append the section."""
    start, end = f"<!-- {key}: start -->", f"<!-- {key}: end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
