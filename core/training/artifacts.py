"""The run's hand-over files, written last: the exported encoder (when training finished) and the report."""

from __future__ import annotations

import sys

from clrun.recipe import resolved
from clrun.training.run import Run

ENCODER_FILE = "encoder.safetensors"


class RunArtifacts:
    """``encoder.safetensors`` at the end of a finished run; ``report.md`` with plots at the end of every
    run, also one that stopped on an error or was halted (a report must never hide the original error)."""

    def clrun_run_end(self, run: Run, metrics: dict[str, float]) -> None:
        from clrun.export import encoder_state, write_encoder

        write_encoder(run.directory / ENCODER_FILE, encoder_state(run.parts.network.state_dict()),
                      resolved(run.recipe), {"epoch": run.epoch, "step": run.step})
        self._report(run)

    def clrun_run_error(self, run: Run, error: BaseException) -> None:
        self._report(run)

    @staticmethod
    def _report(run: Run) -> None:
        try:
            from clrun.report import write_report

            path = write_report(run.directory)
        except Exception as exc:  # a plotting failure must not cost the run its result
            print(f"warning: the report could not be written ({type(exc).__name__}: {exc})", file=sys.stderr)
            return
        print(f"report: {path}", flush=True)
