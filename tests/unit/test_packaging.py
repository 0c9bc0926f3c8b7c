"""The wheel holds every subpackage of core/ and plugins/ under clrun/, and nothing as core/ or plugins/.

An editable install maps folders on the fly and hides a package missing from pyproject's list; only
a built wheel shows it, so this test builds one.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def expected_packages() -> set[str]:
    found = set()
    for folder, prefix in (("core", "clrun"), ("plugins", "clrun/plugins")):
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).as_posix()
            found.add(prefix if relative == "." else f"{prefix}/{relative}")
    return found


def test_wheel_holds_every_subpackage_and_no_repo_folder_names(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
    )
    (wheel,) = tmp_path.glob("cl_run-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert expected_packages() - packages == set(), "packages missing from the wheel: add them to pyproject.toml"
    top_level = {n.split("/", 1)[0] for n in names}
    assert "core" not in top_level and "plugins" not in top_level
    assert "clrun/plugins/__init__.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cl-run = clrun.cli:command" in text
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: cl-run" in metadata


def test_core_never_imports_plugins_timm_or_kornia_nor_names_a_method():
    """Dependencies go plugins -> core; core knows no method, model library or data set by name."""
    forbidden_imports = ("clrun.plugins", "timm", "kornia")
    method_names = ("simclr", "moco", "byol", "simsiam", "swav", "barlow", "vicreg", "ntxent", "dino", "nnclr", "fashion", "cifar",
                    "resnet")
    for path in (REPO / "core").rglob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1]
                assert not module.startswith(forbidden_imports), f"{path}: {stripped}"
        lowered = text.lower()
        for name in method_names:
            assert name not in lowered, f"{path.relative_to(REPO)} mentions {name!r}; core must stay generic"
