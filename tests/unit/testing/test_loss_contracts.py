"""Every registered built-in loss (``clrun/*``) against the loss contracts of ``clrun.testing``.

The cases come from the registry (``clrun.testing.cases``), so a new built-in loss is covered without
touching this file. What each contract checks is in ``core/testing/losses.py``.
"""

from __future__ import annotations

import pytest

import clrun
from clrun import testing

# Smaller state than the defaults (a 65536-key queue, 3000 prototypes) keeps these tests fast; no
# contract depends on the sizes, and the per-loss tests build the defaults.
SETTINGS = {"clrun/moco": {"queue_size": 256}, "clrun/swav": {"num_prototypes": 30},
            "clrun/gram_anchoring": {"loss": {"name": "clrun/ibot"}}}

CASES = testing.cases("clrun/*", kind="loss")


def test_every_builtin_loss_has_every_loss_contract():
    names = {c.name for c in clrun.components("loss", "clrun/*")}
    assert {"clrun/ntxent", "clrun/moco", "clrun/byol", "clrun/simsiam", "clrun/swav", "clrun/barlow_twins",
            "clrun/vicreg"} <= names
    assert sorted((c.name, c.contract) for c in CASES) == sorted(
        (name, contract) for name in names for contract in testing.contracts("loss")
    )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_loss_contract(case):
    case.check(**SETTINGS.get(case.name, {}))
