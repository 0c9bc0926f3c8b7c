"""A torchrun entry point for tests/test_distributed.py: the ``cl-run`` command, except that on torchrun's
first attempt rank 1 kills itself with SIGKILL as step KILL_AT begins (no cleanup of any kind, as when a
node fails). Usage: ``torchrun --max-restarts=1 ... tests/elastic_worker.py KILL_AT RECIPE [OVERRIDES]``."""

import os
import signal
import sys

from clrun.cli import main
from clrun.training import loop

kill_at, argv = int(sys.argv[1]), sys.argv[2:]
if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and os.environ["RANK"] == "1":
    step = loop.train_step

    def step_or_die(parts, images, device, precision, scaler, grad_clip, done):
        if done + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(parts, images, device, precision, scaler, grad_clip, done)

    loop.train_step = step_or_die
sys.exit(main(argv))
