"""The human-readable run report: plots and the report from the files a run folder holds, and the
comparison of a sweep's runs. Reading only the files (never a live run) means a report can be rebuilt
for any run folder, also one from a crashed or halted run."""

from __future__ import annotations

from pathlib import Path

from clrun.report.markdown import render
from clrun.report.plots import write_plots
from clrun.report.records import read_run
from clrun.report.sweep import sweep_figure, write_sweep_report
from clrun.run_folder import RunFolder, write_atomic


def write_report(run_dir: Path) -> Path:
    """The run folder's plots and report (plots first: the report links only those that exist);
    returns the report's path."""
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():  # never create a folder that only says everything is missing
        raise FileNotFoundError(f"no run folder at {folder.path}")
    records = read_run(folder.path)
    plots = write_plots(records, folder.plots)
    write_atomic(folder.report, render(records, plots))
    return folder.report


__all__ = ["write_report", "write_sweep_report", "sweep_figure"]
