"""What ``make_dino.py``, ``make_mae.py``, ``make_ibot.py`` and ``make_ijepa.py`` share: the official code imported
from a tree by path, the tree's commit, module proxies (the patches), the fixture's command line and the fixture
written as JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import types
from pathlib import Path

from tests.parity import views as V


@contextlib.contextmanager
def official(repo: Path):
    """Import from ``repo`` (first on sys.path); afterwards forget the modules it provided (its files and its
    packages, namespace packages too)."""
    before = set(sys.modules)
    sys.path.insert(0, str(repo))

    def from_repo(module) -> bool:
        places = [getattr(module, "__file__", None) or ""] + list(getattr(module, "__path__", []) or [])
        return any(str(p).startswith(str(repo)) for p in places)

    try:
        yield
    finally:
        sys.path.remove(str(repo))
        # all decided before any is removed: a namespace package's path is recomputed from its parent's
        provided = [name for name in set(sys.modules) - before if from_repo(sys.modules[name])]
        for name in provided:
            del sys.modules[name]


def commit_of(repo: Path) -> str:
    """The tree's commit: git's, or for an exported tree the one its ``.commit`` file names."""
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        marker = repo / ".commit"
        return marker.read_text().strip() if marker.is_file() else "unknown"


class Proxy(types.ModuleType):
    """A module that is ``target`` except for the attributes given."""

    def __init__(self, target: types.ModuleType, **overrides):
        super().__init__(target.__name__)
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._target, name)


def command_line(description: str, repository: str, out: Path) -> argparse.ArgumentParser:
    """The options every fixture script takes (a script adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--official", type=Path, required=True, help=f"a tree of {repository}")
    parser.add_argument("--data-root", type=Path, default=V.DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--verbose", action="store_true", help="show the official MetricLogger's lines")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1, the fixture's: the same float64 reductions on every machine)")
    return parser


def dumps(value, indent: int = 0) -> str:
    """JSON with one line per dict entry, a list of scalars on one line (a nested one too while short); floats
    as repr (json's), so they read back exactly."""
    def numbers(v) -> bool:  # a list of scalars
        return isinstance(v, list) and all(isinstance(x, (int, float, str)) for x in v)

    def flat(v) -> bool:
        return isinstance(v, list) and all(isinstance(x, (int, float)) or flat(x) for x in v)

    pad = " " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{json.dumps(str(k))}: {dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    one_line = numbers(value) or (flat(value) and len(json.dumps(value)) <= 200)
    if isinstance(value, list) and value and not one_line:
        return "[\n" + ",\n".join(pad + dumps(v, indent + 1) for v in value) + "\n" + " " * indent + "]"
    return json.dumps(value, separators=(",", ":"))


def write_fixture(path: Path, fixture: dict) -> int:
    """``fixture`` written to ``path`` (``dumps``, checked to read back as written); returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(fixture) + "\n"
    assert json.loads(text) == json.loads(json.dumps(fixture))
    path.write_text(text)
    return path.stat().st_size


def record_gradients(utils, optimizer, step_record, names: dict[int, str]):
    """Observe DINO's and iBOT's gradients, changing nothing: ``utils.clip_gradients`` wrapped to record the total
    of the per-parameter norms it returns (before clipping) and how many it clipped, and an optimizer step
    pre-hook recording the norm AdamW steps with (after clipping and the last layer's freezing) and the
    parameters without a gradient (by ``names``). ``step_record()`` is the current step's record (a dict).
    Returns the unwrapped ``clip_gradients``, for the caller to put back."""
    clip_gradients = utils.clip_gradients

    def recording_clip_gradients(model, clip):
        norms = clip_gradients(model, clip)  # per-parameter norms before clipping
        step_record().update({
            "grad_norm_before_clip": math.sqrt(sum(n * n for n in norms)),
            "params_clipped": sum(1 for n in norms if clip / (n + 1e-6) < 1),
        })
        return norms

    utils.clip_gradients = recording_clip_gradients

    def step_pre_hook(opt, *_):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        step_record().update({
            "grad_norm_stepped": math.sqrt(sum(float((g * g).sum()) for g in grads)),
            "params_without_grad": sorted(names[id(p)] for g in opt.param_groups for p in g["params"]
                                          if p.grad is None),
        })

    optimizer.register_step_pre_hook(step_pre_hook)
    return clip_gradients
