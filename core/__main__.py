"""``python -m clrun`` (and ``torchrun -m clrun``) is the ``cl-run`` command."""

import sys

from clrun.cli import main

sys.exit(main())
