"""The ``loss`` components cl-run ships with (offered through the ``clrun_components`` hook)."""

from __future__ import annotations

from clrun import Component, hookimpl
from clrun.plugins.losses.ntxent import NTXentLoss


@hookimpl
def clrun_components() -> list[Component]:
    return [
        Component("loss", "clrun/ntxent", NTXentLoss, "SimCLR's NT-Xent / InfoNCE with a temperature"),
    ]
