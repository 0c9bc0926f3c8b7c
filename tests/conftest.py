"""Shared fixtures: the component registry (loaded once per session: it takes seconds), a run built as
training builds it (or with another loss), the untrained encoder's kNN accuracy (measured once per
distinct encoder) and a switch that skips the report's plots in tests that do not look at them.

Building a run (``prepare``, ``Run``), crashing one and skipping its report are done here, so a refactoring
of those internals is adapted in one place; tests of an internal module (tests/unit/training/...) import
it directly, as a module's tests do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import pytest
import torch

from clrun import plugin_manager
from clrun.recipe import Recipe
from clrun.training.callbacks.artifacts import RunArtifacts
from clrun.training.model.network import Trainable
from clrun.training.model.reads import step_reads
from clrun.training.run import Run, dataset_fingerprint
from clrun.training.setup import prepare


def pytest_configure(config) -> None:
    """Under pytest-xdist every core runs a worker: one torch thread each keeps the cores busy without
    oversubscribing them (a recipe's train.threads still applies to its run)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


class Crashed(Exception):
    """A simulated crash: raised by ``crash_after_first_checkpoint`` and ``crash_before_step``."""


@pytest.fixture
def crash_before_step(monkeypatch) -> Callable[[Recipe, int], Path]:
    """``crash_before_step(recipe, at) -> run folder``: train ``recipe`` until the process dies (an exception
    here; tests/distributed/test_distributed.py kills a real one) as step ``at`` begins."""
    from clrun.api import train
    from clrun.training.step import Step

    def crash(recipe: Recipe, at: int) -> Path:
        step = Step.__call__

        def step_or_crash(self, images, *places):
            if self.run.step + 1 == at:
                raise Crashed("the node went away")
            return step(self, images, *places)

        with monkeypatch.context() as patched:
            patched.setattr(Step, "__call__", step_or_crash)
            with pytest.raises(Crashed, match="the node went away"):
                train(recipe)
        return Path(recipe.run.dir) / recipe.run.name

    return crash


@pytest.fixture(scope="session")
def assert_same_checkpoints() -> Callable[[Path, Path], None]:
    """``assert_same_checkpoints(run_a, run_b)``: the two run folders' checkpoints hold the same step and
    equal tensors, bit for bit: network, target, loss state and optimizer moments."""
    from clrun.run_folder import RunFolder
    from clrun.training import checkpointing

    def tensors(state, prefix=""):
        if isinstance(state, dict):
            return {k: v for key, value in state.items() for k, v in tensors(value, f"{prefix}{key}.").items()}
        if isinstance(state, (list, tuple)):
            return {k: v for i, value in enumerate(state) for k, v in tensors(value, f"{prefix}{i}.").items()}
        return {prefix: state} if isinstance(state, torch.Tensor) else {}

    def check(a: Path, b: Path) -> None:
        saved = [checkpointing.load(RunFolder(x).checkpoint) for x in (a, b)]
        assert saved[0]["step"] == saved[1]["step"]
        found = [tensors({k: s[k] for k in ("network", "target", "loss", "optimizer")}) for s in saved]
        assert found[0].keys() == found[1].keys() and found[0]
        for key, value in found[0].items():
            assert torch.equal(value, found[1][key]), key

    return check


@pytest.fixture
def crash_after_first_checkpoint(monkeypatch) -> Callable[[Recipe], Path]:
    """``crash_after_first_checkpoint(recipe) -> run folder``: train ``recipe`` and stop it, as a crash would,
    right after its first checkpoint is written; the run folder is then ready for ``--resume``."""
    from clrun.api import train
    from clrun.training.checkpointing import Checkpointer

    def crash(recipe: Recipe) -> Path:
        save = Checkpointer.save

        def save_then_crash(checkpointer, *args, **kwargs):
            save(checkpointer, *args, **kwargs)
            raise Crashed(checkpointer.run.directory)

        with monkeypatch.context() as patched:
            patched.setattr(Checkpointer, "save", save_then_crash)
            with pytest.raises(Crashed) as crashed:
                train(recipe)
        return Path(str(crashed.value))

    return crash


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-xdist (``--dist loadgroup``) hands tests out one by one, so the few long ones (learning
    runs, the full quickstart) do not keep one worker busy while the other idles, as whole files did.
    The exception: a file whose tests share a module-scoped fixture of its own (a trained run folder, a
    torchrun job) is one ``xdist_group``, so that fixture is built once.

    Every test under tests/distributed/ is marked ``distributed`` (it launches torchrun), so
    ``-m "not distributed"`` leaves the multi-process runs out."""
    for item in items:
        module = item.nodeid.split("::")[0]
        if module.startswith("tests/distributed/"):
            item.add_marker(pytest.mark.distributed)
        fixtures = getattr(item, "_fixtureinfo", None)
        shared = fixtures is not None and any(
            defs[-1].scope == "module" and defs[-1].baseid == module for defs in fixtures.name2fixturedefs.values())
        if shared:
            item.add_marker(pytest.mark.xdist_group(module))


@pytest.fixture(scope="session")
def registry():
    """The process-wide registry that ``clrun.load_recipe`` and the CLI use (built-ins and entry points)."""
    return plugin_manager.default_registry()


@pytest.fixture(scope="module")
def cli_uses_session_registry(registry):
    """``clrun.cli.main`` loads the plugins afresh (seconds) on every call: hand it the session's registry
    instead, for a whole module (``pytestmark = pytest.mark.usefixtures("cli_uses_session_registry")``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
        yield


def built_run(recipe: Recipe) -> Run:
    """``recipe``'s run on the CPU as training builds it (same seeding, same initial weights), before its
    first step; it writes nothing."""
    setup = prepare(recipe, "train", torch.device("cpu"))
    return Run(recipe, setup.parts, setup.device, None, steps_per_epoch=setup.steps_per_epoch)


@pytest.fixture(scope="session")
def build_run() -> Callable[[Recipe], Run]:
    """``build_run(recipe)``: the run as training builds it, before its first step (see ``built_run``)."""
    return built_run


def run_with_loss(run: Run, loss_fn: torch.nn.Module) -> Run:
    """``run`` (single-process) training ``loss_fn`` instead of its recipe's loss: the parts' loss, trainable and
    reads (the outputs the networks make) replaced. The optimizer keeps the recipe's loss's parameters."""
    parts = dataclasses.replace(run.parts, loss_fn=loss_fn, trainable=Trainable(run.parts.network, loss_fn),
                                reads=step_reads(run.recipe, loss_fn))
    return dataclasses.replace(run, parts=parts)


@pytest.fixture(scope="session")
def with_loss() -> Callable[[Run, torch.nn.Module], Run]:
    """``with_loss(run, loss_fn)``: ``run`` training ``loss_fn`` instead (see ``run_with_loss``)."""
    return run_with_loss


@pytest.fixture(scope="session")
def untrained_knn(tmp_path_factory) -> Callable:
    """``untrained_knn(recipe, knn) -> float``: kNN top-1 of ``recipe``'s encoder straight from its
    initialization (no step taken), evaluated by the KNNEvaluation ``knn`` as training evaluates it.

    Embedding a neighbour bank and the 10k test split takes most of a minute on a CPU, and most recipes
    start from the very same encoder (same backbone, seed and preprocessing), so each distinct encoder is
    evaluated once per session, by whichever pytest-xdist worker needs it first (the others read its
    result from the session's shared temporary folder). The cache key is what determines the result
    exactly: the backbone's weights, the preprocessed pixels of a few test images, and the evaluator's
    settings and data sets.
    """
    # Under pytest-xdist each worker's base folder sits in the session's own folder, which they share;
    # without it the cache stays in memory (the parent folder outlives the session).
    shared = tmp_path_factory.getbasetemp().parent / "untrained_knn" if os.environ.get("PYTEST_XDIST_WORKER") else None
    measured: dict[str, float] = {}

    def measure(recipe: Recipe, knn) -> float:
        run = built_run(recipe)
        key = _untrained_key(run, knn)
        stored = shared / f"{key}.json" if shared is not None else None
        if key not in measured and stored is not None and stored.exists():
            measured[key] = json.loads(stored.read_text())
        if key not in measured:
            measured[key] = knn.evaluate(run)["knn_top1"]
            if stored is not None:  # written whole, then renamed: another worker never reads half a file
                shared.mkdir(exist_ok=True)
                partial = stored.with_suffix(f".{os.getpid()}.tmp")
                partial.write_text(json.dumps(measured[key]))
                os.replace(partial, stored)
        return measured[key]

    return measure


def _untrained_key(run: Run, knn) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(run.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    probe = torch.stack([knn.test[i][0] for i in range(4)])
    digest.update(run.preprocess(probe).contiguous().numpy().tobytes())
    settings = (knn.k, knn.temperature, knn.batch_size, dataset_fingerprint(knn.train), dataset_fingerprint(knn.test))
    digest.update(repr(settings).encode())
    return digest.hexdigest()


@contextmanager
def _reports_skipped() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunArtifacts, "_report", staticmethod(lambda run: None))
        yield


@pytest.fixture
def no_report() -> Iterator[None]:
    """Runs in the test write no report.md and no plots. Rendering the plots costs about 1.5 CPU seconds
    a run, three quarters of a tiny run's cost; tests that use this assert nothing about the report
    (tests/unit/report/test_report.py and the end-to-end test do)."""
    with _reports_skipped():
        yield


@pytest.fixture(scope="session")
def reports_skipped() -> Callable[[], ContextManager[None]]:
    """``with reports_skipped(): ...``: ``no_report`` for a module-scoped fixture's runs."""
    return _reports_skipped


@pytest.fixture(params=["sliced", "batched"])
def crop_path(request):
    """A test once per path of the crops (clrun/random_resized_crop, kornia/RandomResizedCrop): the CPU's own
    (sliced) and the GPU's (batched, forced on the CPU here)."""
    if request.param == "batched":
        from clrun.plugins.augmentations.resized_crops import batched_on_cpu

        with batched_on_cpu():
            yield request.param
    else:
        yield request.param
