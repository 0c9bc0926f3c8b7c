"""``python -m clrun`` (and ``torchrun -m clrun``) is the ``cl-run`` command."""

from clrun.cli import command

command()
