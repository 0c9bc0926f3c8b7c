"""A callback that fails is named (callback, plugin, recipe line, original message), and the epoch it
failed after keeps its checkpoint; `cl-run check` validates a callback's hook names."""

from __future__ import annotations

from pathlib import Path

import pytest

import clrun
from clrun import plugin_manager
from clrun.cli import main as cl_run_main
from clrun.run_folder import RunFolder
from clrun.training import checkpointing

pytestmark = pytest.mark.usefixtures("no_report")  # these runs are not about the report

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


class FailsAtEpoch2:
    def clrun_epoch_end(self, run, epoch, metrics):
        if epoch == 2:
            raise KeyError("no such metric")


class Misspelled:
    def clrun_epoch_ends(self, run, epoch, metrics):
        pass


@pytest.fixture
def with_test_callbacks(monkeypatch):
    """The built-ins plus a plugin with two callbacks, as the CLI loads them."""
    registry = plugin_manager.load_registry(autoload=False)
    registry.add_all([clrun.Component("callback", "tests/fails", FailsAtEpoch2, "fails in epoch 2"),
                      clrun.Component("callback", "tests/misspelled", Misspelled, "a misspelled hook")],
                     "tests.plugin (tests-dist 1.2)")
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    yield
    plugin_manager.set_default_registry(None)


def run_cli(capsys, *args) -> tuple[int, str]:
    code = cl_run_main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_a_failing_callback_is_named_and_its_epoch_is_kept(with_test_callbacks, tmp_path, capsys):
    code, err = run_cli(capsys, "--no-plugins", TINY, f"run.dir={tmp_path}", "run.name=r", "train.epochs=3",
                        "health.enabled=false", "callbacks=[{name: tests/fails}]")
    assert code == 1
    assert err.splitlines()[-1].startswith("cl-run: training stopped: callback tests/fails from tests.plugin "
                                           "(tests-dist 1.2) (")
    assert err.splitlines()[-1].endswith("failed in clrun_epoch_end: KeyError: 'no such metric' (-v shows the traceback)")
    assert "Traceback" not in err
    assert int(checkpointing.load(RunFolder(tmp_path / "r").checkpoint)["epoch"]) == 2  # the failing epoch's

    code, err = run_cli(capsys, "--no-plugins", TINY, f"run.dir={tmp_path}", "run.name=v", "train.epochs=3",
                        "health.enabled=false", "callbacks=[{name: tests/fails}]", "-v")
    assert code == 1 and "Traceback (most recent call last)" in err and 'raise KeyError("no such metric")' in err


def test_check_rejects_a_misspelled_hook(with_test_callbacks, capsys):
    code, err = run_cli(capsys, "--no-plugins", "check", TINY, "callbacks=[{name: tests/misspelled}]")
    assert code == 2
    assert "callback tests/misspelled from tests.plugin (tests-dist 1.2)" in err
    assert "clrun_epoch_ends" in err


def key_error_factory():
    raise KeyError("missing_setting")


def test_a_factory_that_raises_an_unexpected_error_is_named(monkeypatch, capsys):
    registry = plugin_manager.load_registry(autoload=False)
    registry.add_all([clrun.Component("callback", "tests/keyerror", key_error_factory, "raises KeyError")],
                     "tests.plugin (tests-dist 1.2)")
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    code, err = run_cli(capsys, "check", TINY, "callbacks=[{name: tests/keyerror}]")
    verbose_code, verbose_err = run_cli(capsys, "check", TINY, "callbacks=[{name: tests/keyerror}]", "-v")
    plugin_manager.set_default_registry(None)
    assert code == 2  # nothing ran: a plugin that cannot build is bad input, as one that cannot load
    assert err == ("cl-run: error: callback tests/keyerror from tests.plugin (tests-dist 1.2) (<command line>:1:12) "
                   "failed while being built: KeyError: 'missing_setting' (-v shows the traceback)\n")
    # -v: the plugin author's view, where in their code it failed.
    assert verbose_code == 2 and "Traceback (most recent call last)" in verbose_err
    assert 'raise KeyError("missing_setting")' in verbose_err
