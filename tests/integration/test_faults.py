"""The faults a user meets, as a table: for each, what goes in (a command line, arranged on a copy of a
trained run folder), the exit code, and the message that comes out. Every row goes through the CLI, as
a user would; nothing may print a traceback, and a refused command leaves the run folder as it was.

The topic files test each fault in depth (tests/unit/recipe/test_hostile_recipes.py, test_resume_changes.py,
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
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import clrun
from clrun import plugin_manager
from clrun.cli import main as cl_run_main
from clrun.run_folder import RunFolder
from clrun.training.checkpointing import writes

pytestmark = pytest.mark.usefixtures("no_report")

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
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
        monkeypatch.setattr(writes.torch, "save", no_room)
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
        2, r"<command line>:1:18: error: loss\.temperature: must be a number >= 0\.001 \(SimCLR uses 0\.5; 0\.07 to "
           r"0\.2 is common\), got 0\.0001: the logits are similarities divided by the temperature, and past \+-1000 the "
           r"softmax saturates and the loss explodes instead of training"),
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
        2, r"cl-run: error: callback faulty/bug from faulty\.plugin \(faulty-dist 1\.0\) \(<command line>:1:12\) "
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


# -- the fault matrix: every command on a full, a read-only and a forbidden file system ----------------
# Real file systems, not patched functions (tests/helpers/fault_worker.py): a tmpfs in a mount namespace of its
# own, filled to the last byte, remounted read-only, or owned by another user while the commands run as
# root without the capabilities that let root ignore permissions (as an unprivileged user would).

WORKER = Path(__file__).parents[1] / "helpers" / "fault_worker.py"
# Forbidden: root without the capabilities to override permissions (CAP_DAC_*) or to act as a file's owner.
AS_NOT_OWNER = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
EVALUATORS = """callbacks:
  - name: clrun/knn
    k: 5
    train: {name: clrun/synthetic, num_images: 32}
    test: {name: clrun/synthetic, num_images: 16, seed: 1}
"""
PLACE = {"read-only": "a writable folder", "full": "a larger disk", "forbidden": "a folder you may write to"}


def cause(fault: str, fix: str) -> str:
    """The message's cause and fix for ``fault``; ``fix`` holds ``{place}``."""
    fix = fix.format(place=PLACE[fault])
    return {"read-only": f"the file system is read-only; {fix}",
            "full": f"the disk is full (0 MB free there); free some space or {fix}",
            "forbidden": f"permission denied; {fix}"}[fault]


def no_room(folder: str, fix: str) -> str:
    """A run refused before it writes anything, on a disk too full for its checkpoint."""
    return (rf"cl-run: error: the run's checkpoint needs about \d+ MB in {re.escape(folder)} but only 0 MB are free "
            rf"there; free some space or {re.escape(fix.format(place=PLACE['full']))}")


def cannot_write(what: str, path: str, fault: str, fix: str, kept: str = "") -> str:
    return re.escape(f"cl-run: error: {what}: cannot write {path}: {cause(fault, fix)}{'; ' + kept if kept else ''}")


NEW_RUN = "set run.dir to {place}"
RESUME = "copy the run folder to {place} and resume the copy"

# Each command that writes: its command line ({arena} holds the trained run folder `r`) and, per fault,
# the one line it must print.
WRITING = {
    "train": ([str(TINY), *BASE, "run.dir={arena}/runs"], lambda a, f: (
        no_room(f"{a}/runs", NEW_RUN) if f == "full" else cannot_write("run folder", f"{a}/runs", f, NEW_RUN))),
    "resume": ([str(TINY), *BASE, "train.epochs=3", "run.dir={arena}", "--resume", "{arena}/r"], lambda a, f: (
        no_room(f"{a}/r", RESUME) if f == "full" else cannot_write("run lock", f"{a}/r/.lock", f, RESUME))),
    "eval": (["eval", "{arena}/r", "--with", "{evaluators}"], lambda a, f: cannot_write(
        "eval", f"{a}/r/eval.json", f, "write the evaluation to {place} instead (-o DIR, or out= in Python)")),
    "export": (["export", "{arena}/r"], lambda a, f: cannot_write(
        "export", f"{a}/r/encoder.safetensors", f, "export to {place} instead (-o FILE.safetensors, or out= in Python)",
        "the previous export is kept")),
    "report": (["report", "{arena}/r"], lambda a, f: cannot_write(
        "report", f"{a}/r/plots/loss.png", f, "write the report to {place} instead (-o DIR)", "the previous version is kept")),
    # Only with the fault at its start: every variant is checked, then the first one cannot start.
    "sweep": (["sweep", str(TINY), "loss.temperature=0.1,0.2", *BASE, "run.dir={arena}/runs"], lambda a, f: (
        no_room(f"{a}/runs/tiny-sweep", NEW_RUN) if f == "full" else cannot_write("run folder", f"{a}/runs", f, NEW_RUN))),
    "shards": (["shards", "{images}", "{arena}/shards"], lambda a, f: cannot_write(
        "shards", f"{a}/shards", f, "write the shards to {place} instead (another OUTPUT)")),
    # Its first write is its work folder; on a full disk, the folder is made and its progress record is not.
    "embed": (["embed", "{arena}/r", "{images}", "-o", "{arena}/e.parquet"], lambda a, f: cannot_write(
        "embed", f"{a}/e.parquet.parts" + ("/progress.json" if f == "full" else ""), f,
        "write the embeddings to {place} instead (another -o FILE)")),
}
# The fixes the messages offer work: the same commands with -o write elsewhere ({out}, a writable folder).
ELSEWHERE = {
    "export -o": ["export", "{arena}/r", "-o", "{out}/encoder.safetensors"],
    "eval -o": ["eval", "{arena}/r", "--with", "{evaluators}", "-o", "{out}/eval"],
    "report -o": ["report", "{arena}/r", "-o", "{out}/report"],
    "embed -o": ["embed", "{arena}/r", "{images}", "-o", "{out}/e.parquet"],
    "export --hub-folder": ["export", "{arena}/r", "--hub-folder", "{out}/hub"],
}
WRITTEN_ELSEWHERE = ["encoder.safetensors", "eval/eval.json", "eval/report.md", "report/report.md", "report/plots/loss.png",
                     "e.parquet", "hub/model.safetensors", "hub/config.json", "hub/README.md"]
# The commands that write nothing: run from inside the faulty folder, they must still succeed.
WRITES_NOTHING = {
    "check": ["check", str(TINY), "run.dir={arena}/runs"],
    "components": ["components", "loss"],
    "plugins": ["plugins"],
}


def test_the_matrix_covers_every_command_of_the_cli():
    from clrun.cli import COMMANDS

    assert set(COMMANDS) == {*WRITING, *WRITES_NOTHING} - {"resume"} and "train" in WRITING, (
        "a new command joins the fault matrix: add it to WRITING (with its messages) or WRITES_NOTHING")


@pytest.fixture(scope="module")
def arena_inputs(trained, tmp_path_factory) -> Path:
    """What the arena starts with (the trained run folder, with its report and plots, as `r`) and the
    files the commands read from outside it."""
    from clrun.report import write_report
    from PIL import Image

    base = tmp_path_factory.mktemp("fault-matrix")
    shutil.copytree(trained.path, base / "arena" / "r")
    write_report(base / "arena" / "r")
    (base / "evaluators.yaml").write_text(EVALUATORS, encoding="utf-8")
    for i, label in enumerate(["cat", "dog"]):
        (base / "images" / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(base / "images" / label / f"{i}.png")
    return base


@pytest.mark.parametrize("fault", ["read-only", "full", "forbidden"])
def test_every_command_meets_a_disk_fault_with_one_line_and_leaves_every_file_as_it_was(fault, arena_inputs, tmp_path):
    arena = tmp_path / "arena"
    arena.mkdir()
    commands = {name: argv for name, (argv, _) in WRITING.items()} | ELSEWHERE | WRITES_NOTHING
    out = tmp_path / "out"
    out.mkdir()
    fill_in = {"{evaluators}": str(arena_inputs / "evaluators.yaml"), "{images}": str(arena_inputs / "images")}
    fill_in |= {name: name.replace("{out}", str(out)) for argv in ELSEWHERE.values() for name in argv if "{out}" in name}
    spec = {"fault": fault, "arena": str(arena), "inputs": str(arena_inputs / "arena"), "results": str(tmp_path / "results.json"),
            "commands": {name: [fill_in.get(a, a) for a in argv] for name, argv in commands.items()}}
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    prefix = ["unshare", "--mount", "--propagation", "private"] + (AS_NOT_OWNER if fault == "forbidden" else [])
    done = subprocess.run([*prefix, sys.executable, str(WORKER), str(tmp_path / "spec.json")],
                          capture_output=True, text=True, timeout=600)
    # No mount namespace (a container without CAP_SYS_ADMIN) is a failure, not a skip: the matrix is the proof.
    assert done.returncode == 0, f"the fault worker failed (mount namespaces needed):\n{done.stderr[-3000:]}"
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    wrong = []
    for name, (_, message) in WRITING.items():
        got, pattern = results[name], message(str(arena), fault)
        lines = got["stderr"].splitlines()
        if got["code"] != 2 or len(lines) != 1 or not re.fullmatch(pattern, lines[0]) or got["changed"]:
            wrong.append(f"{name}: exit {got['code']}, changed {got['changed']}, stderr:\n{got['stderr']}"
                         f"expected exit 2, nothing changed and one line matching\n{pattern}\n")
    for name in [*ELSEWHERE, *WRITES_NOTHING]:
        got = results[name]
        if got["code"] != 0 or got["changed"]:
            wrong.append(f"{name}: exit {got['code']}, changed {got['changed']}, stderr:\n{got['stderr']}")
    assert not wrong, "\n".join(wrong)
    assert [p for p in WRITTEN_ELSEWHERE if not (out / p).is_file()] == []


# -- damaged foreign files on the Python API: one UserError naming the file ----------------------------

def test_an_encoder_file_with_damaged_metadata_is_named_by_load_encoder(tmp_path):
    import safetensors.torch
    import torch

    from clrun.export import load_encoder

    path = tmp_path / "encoder.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(path),
                                metadata={"backbone": "timm/test_resnet", "backbone_args": "{in_chans: 1"})
    with pytest.raises(clrun.UserError) as caught:
        load_encoder(path)
    assert str(caught.value) == (f"load_encoder: {path} is not a readable cl-run encoder export (JSONDecodeError: "
                                 f"Expecting property name enclosed in double quotes: line 1 column 2 (char 1))")


def test_a_damaged_weight_file_is_named_by_clrun_create(tmp_path):
    path = written(tmp_path / "weights.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(clrun.UserError) as caught:
        clrun.create("backbone", "timm/test_resnet", checkpoint_path=str(path))
    assert str(caught.value).startswith(f"timm/test_resnet: checkpoint_path: {path} is not a readable weight file "
                                        f"(SafetensorError: ")
