"""Imports: no cycles among cl-run's modules, and nothing heavy imported where a command does not need it.

``import clrun`` and ``cl-run --help`` must not import torch (seconds on a laptop); plugin discovery must
not import timm or kornia (their names are lazy namespaces). These run in fresh interpreters: this test
process has long imported everything.
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import clrun

REPO = Path(__file__).resolve().parents[2]
# Source folder -> import name (pyproject's package-dir).
PACKAGES = {REPO / "core": "clrun", REPO / "plugins": "clrun.plugins"}


# -- no import cycles --------------------------------------------------------------------------------

def module_files(packages: dict[Path, str]) -> dict[str, Path]:
    """Every module's import name -> its file, for source folders mapped onto import names."""
    modules: dict[str, Path] = {}
    for folder, package in packages.items():
        for file in sorted(folder.rglob("*.py")):
            parts = list(file.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = file
    return modules


def imported_modules(file: Path, module: str, known: set[str]) -> set[str]:
    """The known modules ``file`` imports anywhere (in functions too), except under ``if TYPE_CHECKING:``.

    A function-level import is counted: one that only exists to dodge a cycle closes that cycle here.
    """
    tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    type_checking_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    is_package = file.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # `from package import submodule` imports the submodule; `from module import name` the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known and name != module}


def import_graph(packages: dict[Path, str]) -> dict[str, set[str]]:
    files = module_files(packages)
    return {module: imported_modules(file, module, set(files)) for module, file in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return exc.args[1]
    return None


# Imports that close a cycle, each waiting for its fix in a file this test does not own. Kept honest:
# the test fails once the import is gone, so the entry is removed with it.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def test_no_import_cycles():
    graph = import_graph(PACKAGES)
    assert len(graph) > 50 and "clrun.training.setup" in graph["clrun.commands.check"]  # it did read the sources
    for module, imported in KNOWN_CYCLE_EDGES:
        assert imported in graph[module], f"{module} no longer imports {imported}: remove it from KNOWN_CYCLE_EDGES"
        graph[module].discard(imported)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(reversed(cycle))


def test_cycle_finder_finds_a_cycle_and_a_function_level_dodge(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.a import A\n", encoding="utf-8")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\nA = 1\n", encoding="utf-8")
    (tmp_path / "pkg" / "b.py").write_text(textwrap.dedent("""
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from pkg.a import A  # for type hints only: no cycle
        def late():
            from . import c  # relative, in a function: still an edge
    """), encoding="utf-8")
    (tmp_path / "pkg" / "c.py").write_text("def f():\n    from pkg.a import A\n", encoding="utf-8")
    graph = import_graph({tmp_path / "pkg": "pkg"})
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert set(find_cycle(graph)) == {"pkg.a", "pkg.b", "pkg.c"}
    (tmp_path / "pkg" / "c.py").write_text("X = 1\n", encoding="utf-8")
    assert find_cycle(import_graph({tmp_path / "pkg": "pkg"})) is None


# -- what each entry point imports -------------------------------------------------------------------

def imported_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running ``code``."""
    script = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def run_cli(*args: str) -> str:
    """Run ``cl-run ARGS`` as the console script does, in-process in a fresh interpreter."""
    return f"""
import contextlib, io
from clrun.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main({list(args)!r})
    except SystemExit:
        pass
"""


def test_import_clrun_does_not_import_torch():
    imported = imported_after("import clrun")
    assert "clrun" in imported and "yaml" in imported  # it ran
    assert not imported & {"torch", "timm", "kornia", "torchvision", "numpy"}


@pytest.mark.parametrize("args", [("--help",), ("check", "--help"), ("components", "losses"), ()])
def test_help_and_argument_errors_do_not_import_torch(args):
    imported = imported_after(run_cli(*args))
    assert "argparse" in imported
    assert "torch" not in imported


def test_listing_plugins_imports_neither_timm_nor_kornia():
    imported = imported_after(run_cli("--no-plugins", "plugins"))
    assert "clrun" in imported and not imported & {"timm", "kornia", "torchvision"}


# Built-in registration modules that still import torch, because they offer their factories as objects
# rather than by import path. Listing components and plugins pays torch's import time until this is empty.
STILL_IMPORT_TORCH: tuple[str, ...] = ()


@pytest.mark.parametrize("module", __import__("clrun.plugins", fromlist=["BUILTIN_MODULES"]).BUILTIN_MODULES)
def test_builtin_registration_modules_do_not_import_torch(module):
    imported = imported_after(f"import {module}; {module}.clrun_components()")
    if module in STILL_IMPORT_TORCH:  # kept honest: a module that stops importing torch leaves the list
        assert "torch" in imported, f"{module} no longer imports torch: remove it from STILL_IMPORT_TORCH"
    else:
        assert "torch" not in imported


@pytest.mark.parametrize("command", ["components", "plugins"])
def test_listing_with_the_builtins_imports_torch_only_through_the_modules_still_listed(command):
    # With STILL_IMPORT_TORCH empty, `cl-run components` and `cl-run plugins` answer without torch.
    imported = imported_after(run_cli("--no-plugins", command))
    assert ("torch" in imported) == bool(STILL_IMPORT_TORCH)


# -- the public API ------------------------------------------------------------------------------------

def test_every_public_name_imports():
    namespace: dict = {}
    exec("from clrun import *", namespace)
    assert set(clrun.__all__) <= set(namespace)
    for name in clrun.__all__:
        assert getattr(clrun, name) is namespace[name]
    from clrun.training.run import Run

    assert clrun.Run is Run and clrun.distributed is importlib.import_module("clrun.distributed")
    assert {"Run", "StepOutputs", "distributed"} <= set(dir(clrun))
    with pytest.raises(AttributeError, match="module 'clrun' has no attribute 'Runn'"):
        clrun.Runn  # noqa: B018


def test_version_is_the_installed_distributions():
    assert clrun.__version__ == importlib.metadata.version("cl-run")
