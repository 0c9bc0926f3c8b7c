"""The faults a user meets, as a table: for each, what goes in (a command line, arranged on a copy of a
trained run folder), the exit code, and the message that comes out. Every row goes through the CLI, as
a user would; nothing may print a traceback, and a refused command leaves the run folder as it was.

The topic files test each fault in depth (tests/test_hostile_recipes.py, test_resume_changes.py,
test_run_lock.py, test_disk_failures.py, test_signals.py, test_callback_failures.py,
test_unreadable_images.py, test_divergence.py, test_recipe_mutations.py for the property test); this
table is the one place that says what each fault looks like from the outside.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import clrun
from clrun import plugin_manager
from clrun.cli import main as cl_run_main
from clrun.run_folder import RunFolder
from clrun.training import checkpoint

pytestmark = pytest.mark.usefixtures("no_report")

TINY = Path(__file__).parent / "recipes" / "tiny.yaml"
BASE = ["train.epochs=2", "health.enabled=false"]


@dataclass(frozen=True)
class Fault:
    arrange: Callable[[Path, RunFolder, pytest.MonkeyPatch], list[str]]  # -> the command line
    code: int
    message: str  # a regular expression one line of stderr matches in full; {run} is the run folder
    folder_unchanged: bool = True  # the run folder's files are byte for byte as before


def fails_in_epoch_2():
    class FailsInEpoch2:
        def clrun_epoch_end(self, run, epoch, metrics):
            if epoch == 2:
                raise KeyError("no such metric")
    return FailsInEpoch2()


def factory_with_a_bug():
    raise KeyError("missing_setting")


@pytest.fixture
def with_faulty_plugin(monkeypatch):
    registry = plugin_manager.load_registry(autoload=False)
    registry.add_all([clrun.Component("callback", "faulty/fails", fails_in_epoch_2, "fails in epoch 2"),
                      clrun.Component("callback", "faulty/bug", factory_with_a_bug, "a factory with a bug")],
                     "faulty.plugin (faulty-dist 1.0)")
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
    yield
    plugin_manager.set_default_registry(None)


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def recipe_file(tmp: Path, old: str, new: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(TINY.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return path


def fill_disk(code: int):
    def arrange(tmp, run, monkeypatch):
        def no_room(obj, f):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(checkpoint.torch, "save", no_room)
        return [TINY, *BASE, f"run.dir={tmp}", "run.name=new"]
    return arrange


def evil_checkpoint(tmp, run, monkeypatch):
    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    run.checkpoint.write_bytes(pickle.dumps(RunsCode(), protocol=2))  # the pickle protocol torch writes
    return ["eval", run.path]


def lock_held_by_this_process(tmp, run, monkeypatch):
    run.lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "then"}))
    return [TINY, *BASE, "train.epochs=3", f"run.dir={tmp}", "--resume", run.path]


FAULTS = {
    # -- recipes ----------------------------------------------------------------------------------
    "a recipe that is not text": Fault(
        lambda tmp, run, mp: [written(tmp / "r.yaml", b"\x89PNG\r\n\x1a\n")],
        2, r"\S+r\.yaml:1:1: error: not UTF-8 text \(byte 0x89\); save the recipe as UTF-8"),
    "a YAML alias bomb": Fault(
        lambda tmp, run, mp: [recipe_file(tmp, "seed: 0", "a: &a [x, x, x, x, x, x, x, x, x]\n"
                                          + "\n".join(f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]"
                                                      for p, c in zip("abcdefgh", "bcdefghi")))],
        2, r"\S+recipe\.yaml:7:8: error: invalid YAML: aliases copy more than 10000 values \(an alias bomb\?\); "
           r"write the values out or use fewer aliases"),
    "an unknown key": Fault(
        lambda tmp, run, mp: ["check", TINY, "train.epoch=3"],
        2, r"<command line>:1:1: error: train\.epoch: unknown key 'epoch' for section 'train'; did you mean 'epochs'\?"),
    "a temperature that cannot train": Fault(
        lambda tmp, run, mp: ["check", TINY, "loss.temperature=1e-4"],
        2, r"<command line>:1:18: error: loss\.temperature: loss 'clrun/ntxent' could not be built: clrun/ntxent: "
           r"temperature must be >= 0\.001 \(SimCLR uses 0\.5; 0\.07 to 0\.2 is common\), got 0\.0001: the logits are "
           r"similarities divided by the temperature \(up to \+-1e\+04 here\), and past \+-1000 the softmax saturates and "
           r"the loss explodes instead of training"),
    # -- resuming ---------------------------------------------------------------------------------
    "a resume that changes the training": Fault(
        lambda tmp, run, mp: [TINY, *BASE, "loss.temperature=0.5", f"run.dir={tmp}", "--resume", run.path],
        2, r"  loss\.temperature: 0\.2 -> 0\.5"),
    "a resume of a folder another process writes": Fault(
        lock_held_by_this_process,
        2, r"cl-run: error: {run} is in use by process \d+ on \S+ \(since then\): one run folder has one writer\. Wait for "
           r"it to finish; if that process is gone \(e\.g\. on another machine\), delete {run}/\.lock"),
    "a checkpoint that would run code": Fault(
        evil_checkpoint, 2, r"cl-run: error: eval: {run}/checkpoint\.pt is not a cl-run checkpoint: it holds Python "
                            r"objects that only unpickling would read, and unpickling a file can run any code in it, "
                            r"so cl-run does not; pass a checkpoint that cl-run wrote"),
    # -- disks ------------------------------------------------------------------------------------
    "a full disk": Fault(
        fill_disk(errno.ENOSPC), 2, r"cl-run: error: checkpoint: cannot write \S+/new/checkpoint\.pt: the disk is full "
                                    r"\(\d+ MB free there\); free some space or set run\.dir to a larger disk; no "
                                    r"checkpoint was written yet"),
    "a read-only disk": Fault(
        fill_disk(errno.EROFS), 2, r"cl-run: error: checkpoint: cannot write \S+/new/checkpoint\.pt: the file system is "
                                   r"read-only; set run\.dir to a writable folder; no checkpoint was written yet"),
    # -- plugins ----------------------------------------------------------------------------------
    "a plugin factory with a bug": Fault(
        lambda tmp, run, mp: ["check", TINY, "callbacks=[{name: faulty/bug}]"],
        1, r"cl-run: error: callback faulty/bug from faulty\.plugin \(faulty-dist 1\.0\) \(<command line>:1:12\) "
           r"failed while being built: KeyError: 'missing_setting' \(-v shows the traceback\)"),
    "a callback that fails after an epoch": Fault(
        lambda tmp, run, mp: [TINY, *BASE, "train.epochs=3", f"run.dir={tmp}", "run.name=cb", "callbacks=[{name: faulty/fails}]"],
        1, r"cl-run: training stopped: callback faulty/fails from faulty\.plugin \(faulty-dist 1\.0\) \(.*\) failed in "
           r"clrun_epoch_end: KeyError: 'no such metric' \(-v shows the traceback\)"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> RunFolder:
    """The tiny recipe trained 2 epochs: the run folder the resume rows start from."""
    base = tmp_path_factory.mktemp("trained")
    return clrun.train(clrun.load_recipe(TINY, [*BASE, f"run.dir={base}", "run.name=r"])).folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "run.lock"}


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_exits_with_its_code_and_says_what_to_do(name, trained, tmp_path, monkeypatch, capsys,
                                                          with_faulty_plugin):
    fault = FAULTS[name]
    run = RunFolder(tmp_path / "r")
    shutil.copytree(trained.path, run.path)
    argv = [str(a) for a in fault.arrange(tmp_path, run, monkeypatch)]
    before = snapshot(run.path)
    code = cl_run_main(argv)
    err = capsys.readouterr().err
    assert code == fault.code, err
    assert "Traceback" not in err
    pattern = re.compile(fault.message.replace("{run}", re.escape(str(run.path))))
    assert any(pattern.fullmatch(line) for line in err.splitlines()), f"no line matches {pattern.pattern!r}:\n{err}"
    if fault.folder_unchanged:
        assert snapshot(run.path) == before
