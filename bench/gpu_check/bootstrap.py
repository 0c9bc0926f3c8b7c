"""Making the check's imports work on a bare GPU machine, before anything imports cl-run.

That machine has Python and torch (and torchvision) and nothing else, and no network. What cl-run needs
beyond them travels with the working tree as wheels (``bench/gpu_wheels.sh`` puts them in
``bench/.gpu_payload/wheels``). They are unpacked into a temporary folder that goes at the *end* of
``sys.path``: a package the machine already has (its numpy, its pillow) wins, the wheels only fill what is
missing. Unpacking a wheel is what ``pip install --no-deps --target`` does for these wheels (no scripts, no
``.data`` folders), without needing pip on the machine.

cl-run itself is imported from the tree this file sits in, mapped as pyproject's ``package-dir`` maps it
(``clrun`` -> ``core/``, ``clrun.plugins`` -> ``plugins/``), never from an installed copy: the check tests
the working tree it was sent with, and needs no ``pip install -e .`` (which would need setuptools there).
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import importlib.util
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = REPO / "bench" / ".gpu_payload"
PACKAGE_DIRS = {"clrun": REPO / "core", "clrun.plugins": REPO / "plugins"}
FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz")


class TreeFinder(importlib.abc.MetaPathFinder):
    """Finds ``clrun``, ``clrun.plugins`` and their immediate children in this repository's folders (deeper
    modules follow their package's ``__path__``), ahead of any installed cl-run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in PACKAGE_DIRS:
            folder = PACKAGE_DIRS[fullname]
            return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])
        parent = fullname.rpartition(".")[0]
        if parent in PACKAGE_DIRS:
            return importlib.machinery.PathFinder.find_spec(fullname, [str(PACKAGE_DIRS[parent])])
        return None


def clrun_from_tree() -> None:
    if "clrun" in sys.modules:
        raise RuntimeError("gpu_check.bootstrap must run before anything imports clrun")
    sys.meta_path.insert(0, TreeFinder())


def unpack_wheels(payload: Path) -> list[str]:
    """Unpack ``payload/wheels/*.whl`` into a temporary folder appended to ``sys.path`` (removed at exit);
    returns the wheels' file names (none when the folder is absent: a machine that has everything)."""
    wheels = sorted((payload / "wheels").glob("*.whl"))
    if not wheels:
        return []
    site = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    atexit.register(shutil.rmtree, site, ignore_errors=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    sys.path.append(str(site))
    return [w.name for w in wheels]


def prepare(payload: Path = PAYLOAD) -> list[str]:
    """Both of the above; returns the wheels unpacked."""
    clrun_from_tree()
    return unpack_wheels(payload)


def carried_fmnist(payload: Path = PAYLOAD) -> str | None:
    """The payload's Fashion-MNIST folder (``bench/gpu_wheels.sh`` puts the four files there for the GPU
    machine, which has no Debian package), or None when it does not hold all four."""
    folder = payload / "fashion-mnist"
    return str(folder) if all((folder / f).is_file() for f in FMNIST_FILES) else None
