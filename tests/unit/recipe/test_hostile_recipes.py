"""Hostile recipes: every one is a recipe error at ``file:line:col`` with exit 2, never a traceback or a hang.

Each case states the bytes of a recipe file (mostly tests/recipes/tiny.yaml with one edit; its line
numbers are used below) and the command-line overrides, and expects exactly these stderr lines from
``cl-run check``, run in-process under a time limit. Nothing may be written: no run folder, and no
file from a tag that would run a command if it were ever honoured.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest

from clrun.cli import main

TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"
TIME_LIMIT_S = 10  # the slowest case takes well under a second; a hang used to take forever
TAG_REFUSED = "is not allowed in a recipe, which holds only text, numbers, true/false, null, lists and mappings; remove the tag"
NOT_TEXT = "a recipe is plain text: is this the right file?"


pytestmark = pytest.mark.usefixtures("cli_uses_session_registry")


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the test if the body is still running after ``seconds`` (a hang is a failure)."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def tiny(old: str, new: bytes) -> bytes:
    """tiny.yaml's bytes with ``old`` (which must occur once) replaced by ``new``."""
    text = TINY.read_bytes()
    assert text.count(old.encode()) == 1, f"edit target {old!r} must occur once in tiny.yaml"
    return text.replace(old.encode(), new)


def billion_laughs(levels: int = 10) -> bytes:
    """The classic alias bomb: ten names, each a list of ten aliases to the one before (10**10 values)."""
    names = "abcdefghij"[:levels]
    lines = [f"{names[0]}: &{names[0]} [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"{n}: &{n} [" + ", ".join([f"*{p}"] * 10) + "]" for p, n in zip(names, names[1:])]
    return ("\n".join(lines) + "\n").encode()


CASES = [
    # -- not text ---------------------------------------------------------------------------------
    pytest.param(tiny("  dir: runs", "  dir: r\xe9sultats".encode("latin-1")), [],
                 ["44:9: error: not UTF-8 text (byte 0xe9); save the recipe as UTF-8"], id="latin-1-byte"),
    pytest.param(TINY.read_text(encoding="utf-8").encode("utf-16"), [],
                 ["1:1: error: not UTF-8 text (byte 0xff); save the recipe as UTF-8"], id="utf-16-file"),
    pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(range(256)), [],
                 ["1:1: error: not UTF-8 text (byte 0x89); save the recipe as UTF-8"], id="binary-png"),
    pytest.param(b"\x7fELF\x02\x01\x01\x00\x00\x00", [],
                 [f"1:1: error: control character #x007f is not allowed in YAML; {NOT_TEXT}"], id="binary-elf"),
    pytest.param(tiny("seed: 0\n", b"seed: 0\x00\n"), [],
                 [f"3:8: error: control character #x0000 is not allowed in YAML; {NOT_TEXT}"], id="nul-byte"),
    pytest.param(TINY.read_bytes() + b"#" * (64 * 1024), [],
                 ["1:1: error: file is larger than 64 KiB, the limit for a recipe; is this the right file?"],
                 id="over-size-limit"),
    # -- nesting: refused at the 65th level, before Python's recursion limit -----------------------
    pytest.param(b"a: " + b"[" * 5000 + b"]" * 5000, [],
                 ["1:67: error: invalid YAML: nested more than 64 levels deep; a recipe needs a handful"],
                 id="5000-nested-lists"),
    pytest.param(b"{a: " * 4000 + b"1" + b"}" * 4000, [],
                 ["1:254: error: invalid YAML: nested more than 64 levels deep; a recipe needs a handful"],
                 id="4000-nested-mappings"),
    pytest.param(b"- " * 3000 + b"x", [],
                 ["1:129: error: invalid YAML: nested more than 64 levels deep; a recipe needs a handful"],
                 id="3000-nested-block-lists"),
    pytest.param(b"a: &x " + b"[" * 60 + b"]" * 60 + b"\nb: [[[[[[*x]]]]]]", [],
                 ["2:10: error: invalid YAML: alias *x nests values more than 64 levels deep"], id="deep-through-alias"),
    # -- aliases --------------------------------------------------------------------------------------
    pytest.param(billion_laughs(), [],
                 ["4:36: error: invalid YAML: aliases copy more than 10000 values (an alias bomb?); "
                  "write the values out or use fewer aliases"], id="billion-laughs"),
    pytest.param(tiny("seed: 0\n", b"seed: &s [*s]\n"), [],
                 ["3:11: error: invalid YAML: alias *s is inside the value it names (a value cannot contain itself)"],
                 id="alias-to-itself"),
    # -- tags: only plain YAML's --------------------------------------------------------------------
    pytest.param(tiny("  dir: runs", b"  dir: !!python/name:os.system"), [],
                 [f"44:8: error: run.dir: YAML tag '!!python/name:os.system' {TAG_REFUSED}"], id="python-name-tag"),
    pytest.param(tiny("  dir: runs", b"  dir: !!python/object/apply:os.system [touch pwned]"), [],
                 [f"44:8: error: run.dir: YAML tag '!!python/object/apply:os.system' {TAG_REFUSED}"],
                 id="python-apply-tag"),
    pytest.param(tiny("loss:\n", b"loss: !foo\n"), [],
                 [f"29:7: error: loss: YAML tag '!foo' {TAG_REFUSED}"], id="local-tag-on-a-mapping"),
    pytest.param(tiny("seed: 0\n", b"seed: !!binary AA==\n"), [],
                 [f"3:7: error: seed: YAML tag '!!binary' {TAG_REFUSED}"], id="binary-tag"),
    pytest.param(tiny("seed: 0\n", b"!!python/name:os.system : 0\n"), [],
                 [f"3:1: error: YAML tag '!!python/name:os.system' {TAG_REFUSED}"], id="tag-on-a-key"),
    # -- scalars that do not fit their tag --------------------------------------------------------
    pytest.param(tiny("  epochs: 1", b"  epochs: !!int one"), [],
                 ["38:11: error: train.epochs: 'one' is not a valid whole number (invalid literal for int() with "
                  "base 10); fix it, or quote it to use it as text"], id="int-tag-on-text"),
    pytest.param(tiny("  epochs: 1", b"  epochs: !!float"), [],
                 ["38:11: error: train.epochs: '' is not a valid number; fix it, or quote it to use it as text"],
                 id="empty-float-tag"),
    pytest.param(tiny("seed: 0\n", b"seed: 99999999999999999999999\n"), [],
                 ["3:7: error: seed: must fit in 64 bits (-9223372036854775808 to 18446744073709551615), "
                  "got 99999999999999999999999"], id="seed-beyond-64-bits"),
    pytest.param(tiny("seed: 0\n", b"seed: 2024-13-01\n"), [],
                 ["3:7: error: seed: '2024-13-01' is not a valid date (month must be in 1..12); fix it, or quote it "
                  "to use it as text"], id="impossible-date"),
    pytest.param(tiny("seed: 0\n", b"seed: " + b"9" * 5000 + b"\n"), [],
                 ["3:7: error: seed: '9999999999999999999999999999999999999999...' is not a valid whole number "
                  "(more than Python's limit of 4300 digits); fix it, or quote it to use it "
                  "as text"], id="5000-digit-integer"),
    pytest.param(tiny("  epochs: 1", b"  epochs: ="), [],
                 ["38:11: error: train.epochs: expected an integer, got string '='"], id="lone-equals-sign-is-text"),
    # -- command-line overrides ---------------------------------------------------------------------
    pytest.param(TINY.read_bytes(), ["train.epochs=!!python/name:os.system"],
                 [f"<command line>:1:14: error: train.epochs: YAML tag '!!python/name:os.system' {TAG_REFUSED}"],
                 id="override-python-tag"),
    pytest.param(TINY.read_bytes(), ["run.name=a\x00b"],
                 [f"<command line>:1:10: error: run.name: control character #x0000 is not allowed in YAML; {NOT_TEXT}"],
                 id="override-nul"),
    pytest.param(TINY.read_bytes(), ["run.name=" + "x" * 10_001],
                 ["<command line>:1:10: error: run.name: value is 10001 characters long, over the 10000 allowed on "
                  "the command line; put it in the recipe file"], id="override-over-size-limit"),
    pytest.param(TINY.read_bytes(), ["a." * 100 + "b=1"],
                 ["<command line>:1:1: error: a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a....: "
                  "key is nested more than 64 levels deep"], id="override-deep-key"),
    pytest.param(TINY.read_bytes(), ["train.epochs=" + "[" * 5000],
                 ["<command line>:1:14: error: train.epochs: invalid YAML: nested more than 64 levels deep; "
                  "a recipe needs a handful"], id="override-deep-value"),
]


@pytest.mark.parametrize("content, overrides, expected", CASES)
def test_hostile_recipe_is_a_recipe_error(content, overrides, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "hostile.yaml"
    recipe.write_bytes(content)
    with time_limit(TIME_LIMIT_S):
        code = main(["check", str(recipe), *overrides])
    out, err = capsys.readouterr()
    located = [line if line.startswith("<command line>") else f"{recipe}:{line}" for line in expected]
    assert err.splitlines() == located + [f"cl-run: {len(expected)} problem(s); nothing was run"]
    assert code == 2
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.yaml"]  # no run folder, no "pwned"
