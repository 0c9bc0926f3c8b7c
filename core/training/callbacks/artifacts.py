"""The run's hand-over files, written last: the exported encoder (when training finished) and the report."""

from __future__ import annotations

import sys

from clrun.encoder_file import encoder_state, provenance, write_encoder
from clrun.hookspecs import hookimpl
from clrun.recipe import resolved
from clrun.training.run import Run


class RunArtifacts:
    """The encoder at the end of a finished run; the report with plots at the end of every run, also one
    that stopped on an error or was halted (a report must never hide the original error).

    Its hooks wrap every other callback's: the report reads the files the metrics log writes last."""

    @hookimpl(wrapper=True)
    def clrun_run_end(self, run: Run, metrics: dict[str, float]):
        result = yield
        write_encoder(run.folder.encoder, encoder_state(run.network.state_dict()), resolved(run.recipe),
                      {"epoch": run.epoch, "step": run.step, **provenance(run.folder.read_init())})
        self._report(run)
        return result

    @hookimpl(wrapper=True)
    def clrun_run_error(self, run: Run, error: BaseException):
        result = yield
        self._report(run)
        return result

    @staticmethod
    def _report(run: Run) -> None:
        try:
            # Imported here: matplotlib takes a while to import and only the end of a run needs it.
            from clrun.report import write_report

            path = write_report(run.directory)
        except Exception as exc:  # a plotting failure must not cost the run its result
            print(f"warning: the report could not be written ({type(exc).__name__}: {exc})", file=sys.stderr)
            return
        print(f"report: {path}", flush=True)
