"""Every registered mask generator against the mask contracts of ``clrun.testing`` (core/testing/masks.py),
with its defaults: found from the registry, so a new generator is covered without touching this file."""

from __future__ import annotations

import pytest

from clrun import testing


@pytest.mark.parametrize("case", testing.cases(kind="mask"), ids=str)
def test_mask_contract(case):
    case.check()


def test_the_built_in_generators_are_all_checked():
    names = {case.name for case in testing.cases(kind="mask")}
    assert {"clrun/random_mask", "clrun/block_mask", "clrun/multiblock_mask"} <= names
