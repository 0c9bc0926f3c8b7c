"""Checkpointing: the training state declared once (``state``), written to and read from one of two
storages (``one_file``, ``sharded``) chosen once when the run opens (``opening``), through a
``Checkpointer`` (``checkpointer``, the only module that imports a storage); beside them, what a resumed
recipe may change (``policy``) and when a start continues a run by itself (``restart``).

The loop calls ``Checkpointer.save(position)``; opening a run calls ``Checkpointer.restore(path)``.
"""

from clrun.training.checkpointing.checkpointer import Checkpointer, find, latest, load
from clrun.training.checkpointing.opening import open_run
from clrun.training.checkpointing.state import Position, TrainState, load_module, restore_callbacks

__all__ = ["Checkpointer", "Position", "TrainState", "find", "latest", "load", "load_module", "open_run",
           "restore_callbacks"]
