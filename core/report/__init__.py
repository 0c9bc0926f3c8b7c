"""The human-readable run report: plots and the report from the files a run folder holds, and the
comparison of a sweep's runs. Reading only the files (never a live run) means a report can be rebuilt
for any run folder, also one from a crashed or halted run."""

from __future__ import annotations

from pathlib import Path

from clrun.report.markdown import render
from clrun.report.plots import write_plots
from clrun.report.records import read_npz, read_run, use_evaluation
from clrun.report.sweep import sweep_figure, write_sweep_report
from clrun.run_folder import RunFolder
from clrun.storage import make_folder, write_atomic


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """The run folder's plots and report (plots first: the report links only those that exist);
    returns the report's path. ``out``: a folder to write them in instead of the run folder (one that
    is read-only, archived or shared); an evaluation written there (``cl-run eval -o``) is the report's."""
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():  # never create a folder that only says everything is missing
        raise FileNotFoundError(f"no run folder at {folder.path}")
    records = read_run(folder.path)
    target = folder if out is None else RunFolder(make_folder(Path(out), "report"))
    if out is not None:
        use_evaluation(records, target.evaluation)
        if target.space.is_file():  # the evaluated checkpoint's pictures (cl-run eval -o)
            records.space = read_npz(target.space, records)
    plots = write_plots(records, target.plots)
    write_atomic(target.report, render(records, plots, target.path), "report")
    return target.report


__all__ = ["write_report", "write_sweep_report", "sweep_figure"]
