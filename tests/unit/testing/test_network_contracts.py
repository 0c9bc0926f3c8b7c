"""Every registered built-in head and backbone against the contracts of ``clrun.testing``: projectors
and predictors (``clrun/*``), and backbones (``clrun/*`` plus two of timm's 1,000+ pass-through
models, ``timm/test_resnet`` and ``timm/test_vit``: tiny ones, a CNN and a ViT; every ``timm/*`` name
goes through the same ``create_timm_backbone``).

The cases come from the registry (``clrun.testing.cases``), so a new built-in is covered without
touching this file. What each contract checks is in ``core/testing/modules.py``.
"""

from __future__ import annotations

import pytest

import clrun
from clrun import testing

TIMM_BACKBONES = ("timm/test_resnet", "timm/test_vit")

HEAD_CASES = testing.cases("clrun/*", kind="projector") + testing.cases("clrun/*", kind="predictor")
BACKBONE_CASES = testing.cases("clrun/*", kind="backbone") + [
    case for name in TIMM_BACKBONES for case in testing.cases(name, kind="backbone")
]


def test_every_builtin_head_and_the_timm_backbones_have_cases():
    for kind, cases in (("projector", HEAD_CASES), ("predictor", HEAD_CASES), ("backbone", BACKBONE_CASES)):
        names = {c.name for c in clrun.components(kind, "clrun/*")} | (set(TIMM_BACKBONES) if kind == "backbone" else set())
        covered = {(c.name, c.contract) for c in cases if c.kind == kind}
        assert covered == {(name, contract) for name in names for contract in testing.contracts(kind)}, kind
    assert {c.name for c in HEAD_CASES} >= {"clrun/mlp", "clrun/identity"}


@pytest.mark.parametrize("case", HEAD_CASES, ids=str)
def test_head_contract(case):
    case.check()


@pytest.mark.parametrize("case", BACKBONE_CASES, ids=str)
def test_backbone_contract(case):
    case.check()
