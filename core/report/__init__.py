"""The human-readable run report: plots and ``report.md`` from the files a run folder holds, and the
comparison of a sweep's runs. Reading only the files (never a live run) means a report can be rebuilt
for any run folder, also one from a crashed or halted run."""

from __future__ import annotations

from pathlib import Path

from clrun.report.markdown import render
from clrun.report.plots import write_plots
from clrun.report.records import read_run, write_atomic
from clrun.report.sweep import sweep_figure, write_sweep_report

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"


def write_report(run_dir: Path) -> Path:
    """``run_dir/plots/*.png`` and ``run_dir/report.md`` (plots first: the report links only those that
    exist); returns the report's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():  # never create a folder that only says everything is missing
        raise FileNotFoundError(f"no run folder at {run_dir}")
    records = read_run(run_dir)
    plots = write_plots(records, run_dir / PLOTS_DIR)
    path = run_dir / REPORT_FILE
    write_atomic(path, render(records, plots))
    return path


__all__ = ["write_report", "write_sweep_report", "sweep_figure"]
