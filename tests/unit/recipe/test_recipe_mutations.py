"""Property: any edit of a valid recipe gives ``cl-run check`` exit 0 or 2, never a traceback, never a run folder on 2.

Hypothesis mutates tests/recipes/tiny.yaml and recipes/quickstart.yaml (delete, duplicate or swap
lines, change a value to another YAML scalar or construct, insert random bytes or a tag) and runs
``cl-run check`` in-process on the result. Most mutants stop at validation, before anything is
built, so 40 examples take seconds (the same 40 every run); the slow variant tries 1000 new ones.
"""

from __future__ import annotations

import re

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clrun.cli import main

ROOT = Path(__file__).parents[3]
BASES = [(ROOT / "tests" / "recipes" / "tiny.yaml").read_bytes(), (ROOT / "recipes" / "quickstart.yaml").read_bytes()]
OTHER_VALUES = [
    "0", "-1", "1e400", "-.inf", ".nan", "0x1F", "1_000", "99999999999999999999999", "null", "~", "yes", "no", "true",
    "''", "'x'", "\"\\t\"", "=", "2024-13-01", "2024-01-01", "[]", "{}", "[1, [2]]", "{a: 1}", "|", ">", "-", "?",
    "!!int x", "!!bool maybe", "!!str 3", "!!float", "!!binary AA==", "!!python/name:os.system", "!foo 1",
    "&a 1", "*a", "*undefined", "<<: {a: 1}", "timm/test_resnet", "clrun/nope", "'%'", "@", "`", "#",
]
"""What a value may become: scalars of every YAML type, traps of YAML 1.1, collections, tags, anchors, aliases."""


pytestmark = pytest.mark.usefixtures("cli_uses_session_registry")


@st.composite
def mutated_recipes(draw) -> bytes:
    """A valid recipe's bytes with one to three random edits."""
    lines = draw(st.sampled_from(BASES)).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["delete", "duplicate", "swap", "value", "bytes", "tag"]))
        if edit == "delete" and len(lines) > 1:
            del lines[i]
        elif edit == "duplicate":
            lines.insert(i, lines[i])
        elif edit == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif edit == "value":
            key, colon, _ = lines[i].partition(b":")
            new = draw(st.sampled_from(OTHER_VALUES)).encode()
            lines[i] = key + b": " + new + b"\n" if colon else lines[i][:-1] + b" " + new + b"\n"
        elif edit == "bytes":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.binary(min_size=1, max_size=4)) + lines[i][at:]
        elif edit == "tag":
            key, colon, value = lines[i].partition(b":")
            tag = draw(st.sampled_from([b"!foo", b"!!python/object/apply:os.system", b"!!set", b"!!str", b"!!map"]))
            lines[i] = key + b": " + tag + b" " + value.lstrip() if colon else tag + b" " + lines[i]
    return b"".join(lines)


def check_mutant(recipe: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutant.yaml"
        path.write_bytes(recipe)
        out, err = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(folder)  # the recipes put run folders under ./runs: none may appear on exit 2
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["check", str(path)])
        finally:
            os.chdir(cwd)
        assert code in (0, 2), f"exit {code}\n{err.getvalue()}"
        assert "Traceback" not in err.getvalue()
        if code == 2:
            text = err.getvalue()
            # A recipe problem list, a located error ("file:line:col: error: ...") or another user error.
            assert (text.rstrip().endswith("problem(s); nothing was run") or "cl-run: error:" in text
                    or re.match(r"^\S+:\d+:\d+: error: ", text))
            assert sorted(p.name for p in Path(folder).iterdir()) == ["mutant.yaml"]


COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=40, derandomize=True, **COMMON)  # the same 40 on every run: a failure is never luck
@given(mutated_recipes())
def test_mutated_recipe_exits_0_or_2_without_traceback(recipe):
    check_mutant(recipe)


@pytest.mark.slow
@settings(max_examples=1000, **COMMON)  # new random mutants on every run
@given(mutated_recipes())
def test_many_mutated_recipes_exit_0_or_2_without_traceback(recipe):
    check_mutant(recipe)
