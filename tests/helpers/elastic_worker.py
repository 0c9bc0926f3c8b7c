"""A torchrun entry point for tests/distributed/test_distributed.py: the ``cl-run`` command, except that on torchrun's
first attempt rank 1 kills itself with SIGKILL as step KILL_AT begins (no cleanup of any kind, as when a
node fails). Usage: ``torchrun --max-restarts=1 ... tests/helpers/elastic_worker.py KILL_AT RECIPE [OVERRIDES]``."""

import os
import signal
import sys

from clrun.cli import command
from clrun.training.step import Step

kill_at, argv = int(sys.argv[1]), sys.argv[2:]
if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and os.environ["RANK"] == "1":
    step = Step.__call__

    def step_or_die(self, images, *places):
        if self.run.step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, images, *places)

    Step.__call__ = step_or_die
sys.argv = [sys.argv[0], *argv]
command()  # as `cl-run`: ends the process without the interpreter's finalization
