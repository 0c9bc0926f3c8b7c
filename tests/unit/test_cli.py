"""The ``cl-run`` command line: mostly in-process through ``clrun.cli.main``, twice through the real console script.

Exit codes: 0 success, 1 training failed, 2 bad input (nothing is run).
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import timm
import torch

import clrun
from clrun.cli import main
from clrun.plugins import BUILTIN_MODULES

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
CL_RUN = Path(sys.executable).with_name("cl-run")  # the console script installed next to this Python
BAD_KEY_LINE = "38:3: error: train.epoch: unknown key 'epoch' for section 'train'; did you mean 'epochs'?"


pytestmark = pytest.mark.usefixtures("cli_uses_session_registry")


def cl_run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def misspelled_recipe(folder: Path) -> Path:
    path = folder / "bad.yaml"
    path.write_text(TINY.read_text(encoding="utf-8").replace("  epochs: 1\n", "  epoch: 1\n"), encoding="utf-8")
    return path


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def console_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert CL_RUN.is_file(), f"console script not installed at {CL_RUN}"
    return subprocess.run([str(CL_RUN), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


# -- bad recipes: exit 2, every problem on stderr, nothing run ------------------------------------

def test_misspelled_key_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = misspelled_recipe(tmp_path)
    for command in (["check", bad], [bad], ["train", bad, "train.epochs=2"]):
        code, out, err = cl_run(capsys, *command)
        assert code == 2
        assert out == ""
        assert err.splitlines() == [f"{bad}:{BAD_KEY_LINE}", "cl-run: 1 problem(s); nothing was run"]
    assert not (tmp_path / "runs").exists()  # nothing was run, no run folder


@pytest.mark.slow  # a console-script subprocess (imports everything afresh, ~5 s)
def test_misspelled_key_console_script(tmp_path):
    bad = misspelled_recipe(tmp_path)
    result = console_script(bad, "train.epochs=2", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{bad}:{BAD_KEY_LINE}" in result.stderr.splitlines()
    assert "cl-run: 1 problem(s); nothing was run" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists()


# -- components and plugins ---------------------------------------------------------------------

def test_components_loss(capsys):
    code, out, err = cl_run(capsys, "components", "loss")
    assert code == 0, err
    lines = out.splitlines()
    assert all(line.split()[0] == "loss" for line in lines)
    (ntxent,) = [line for line in lines if line.split()[1] == "clrun/ntxent"]
    assert "NT-Xent" in ntxent
    assert ntxent.endswith(f"[clrun.plugins.losses.components (cl-run {clrun.__version__})]")


def test_components_console_script(tmp_path):
    result = console_script("components", "loss", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (ntxent,) = [line for line in result.stdout.splitlines() if "clrun/ntxent" in line]
    assert ntxent.split()[:2] == ["loss", "clrun/ntxent"]
    assert ntxent.endswith(f"[clrun.plugins.losses.components (cl-run {clrun.__version__})]")


def test_components_pattern_filters(capsys):
    code, out, err = cl_run(capsys, "components", "backbone", "timm/resnet1*")
    assert code == 0, err
    names = [line.split()[1] for line in out.splitlines()]
    assert {line.split()[0] for line in out.splitlines()} == {"backbone"}
    assert names == sorted(f"timm/{n}" for n in timm.list_models("resnet1*"))
    assert "timm/resnet10t" in names and "timm/resnet18" in names
    assert "timm/resnet50" not in names and "timm/test_resnet" not in names


def test_components_without_pattern_show_a_lazy_namespace_as_one_row(capsys):
    code, out, err = cl_run(capsys, "components", "backbone")
    assert code == 0, err
    rows = out.splitlines()
    (timm_row,) = [line for line in rows if line.split()[:2] == ["backbone", "timm/*"]]
    assert "any timm model" in timm_row and timm_row.endswith("[clrun.plugins.backbones.components (cl-run " + clrun.__version__ + ")]")
    assert not any(line.split()[1] == "timm/resnet18" for line in rows[:-1])  # the names are not listed...
    assert rows[-1] == ("(a name ending in /* is a namespace resolved on first use; list its names with a pattern, "
                        "e.g. cl-run components backbone 'timm/*')")  # ...but the way to list them is


def test_components_lists_every_kind_in_order(capsys):
    code, out, err = cl_run(capsys, "components")
    assert code == 0, err
    rows = [line.split()[:2] for line in out.splitlines()[:-1]]
    kinds = [kind for kind, _ in rows]
    assert kinds == sorted(kinds, key=clrun.KINDS.index)  # grouped by kind, in the loop's order
    for lazy in (["augmentation", "kornia/*"], ["backbone", "timm/*"], ["optimizer", "torch/*"]):
        assert lazy in rows
    assert ["optimizer", "timm/lars"] in rows and ["loss", "clrun/ntxent"] in rows


def test_components_no_match(capsys):
    code, out, err = cl_run(capsys, "components", "loss", "nothing/like*this")
    assert (code, out, err) == (1, "", "no components match\n")


def test_components_unknown_kind(capsys):
    with pytest.raises(SystemExit) as info:
        main(["components", "losses"])
    assert info.value.code == 2
    assert "invalid choice: 'losses'" in capsys.readouterr().err


def test_plugins_lists_builtins_ok(capsys):
    code, out, err = cl_run(capsys, "plugins")
    assert code == 0, err
    for module in BUILTIN_MODULES:
        # A lazy namespace is named, not counted: counting it would import its library.
        pattern = rf"ok\s+{re.escape(module)}\s+cl-run {re.escape(clrun.__version__)}\s+\((\d+) components((, all of \w+ \w+/\*)*)\)"
        (match,) = [m for m in map(lambda line: re.fullmatch(pattern, line), out.splitlines()) if m]
        assert int(match.group(1)) >= 1 or match.group(2), module
    assert "BROKEN" not in out
    lines = out.splitlines()
    assert any(line.startswith("ok      clrun.plugins.backbones.components ") and line.endswith("(0 components, all of backbone timm/*)") for line in lines)
    assert any(line.startswith("ok      clrun.plugins.optim.components ") and line.endswith("(4 components, all of optimizer torch/*)") for line in lines)


# -- check ----------------------------------------------------------------------------------------

def test_check_valid_recipe(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cl_run(capsys, "check", TINY)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == f"{TINY}: OK"
    assert any(line.startswith("  data: clrun/synthetic with ") for line in lines)
    assert "  views: 2 -> 3x32x32, 3x32x32" in lines
    assert any(line.startswith("  backbone: timm/test_resnet (") for line in lines)
    assert any(line.startswith("  step: clrun/ntxent loss ") for line in lines)
    assert list(tmp_path.iterdir()) == []  # check writes nothing


# -- training, resuming ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs of 4 steps (64 synthetic images, batch 16) through the CLI; returns (run folder, stdout)."""
    runs = tmp_path_factory.mktemp("trained") / "runs"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(TINY), "train.epochs=2", f"run.dir={runs}"])
    assert code == 0, err.getvalue()
    return runs / "tiny", out.getvalue()


def test_training_writes_a_run_folder(trained):
    run, out = trained
    assert f"run folder: {run}" in out.splitlines()
    assert {p.name for p in run.iterdir()} >= {"recipe.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"}
    assert not list(run.glob(".*tmp*"))  # no temporary files left behind

    # the resolved recipe: overrides applied, defaults filled in, loadable again
    import yaml

    written = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    assert written["train"]["epochs"] == 2
    assert written["train"]["grad_clip"] is None
    assert written["data"]["dataset"]["name"] == "clrun/synthetic"
    assert written["backbone"] == {"name": "timm/test_resnet"}

    records = read_metrics(run)
    epochs = [(r["epoch"], r["step"]) for r in records if r["kind"] == "epoch"]
    assert epochs == [(1, 4), (2, 8)]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert [r["epoch"] for r in steps] == [1] * 4 + [2] * 4
    assert all(math.isfinite(r["loss"]) and r["lr"] == pytest.approx(1e-3) for r in steps)
    assert records[-1]["kind"] == "final"

    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert (summary["epoch"], summary["step"]) == (2, 8)
    assert math.isfinite(summary["loss"])

    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 8)


def test_training_prints_epochs_to_stdout(trained):
    # The per-epoch lines go to the current sys.stdout (so they can be redirected or captured).
    _, out = trained
    assert any(line.startswith("epoch 1/2  loss ") for line in out.splitlines())
    assert any(line.startswith("epoch 2/2  loss ") for line in out.splitlines())


def test_callback_metrics_reach_the_summary_metrics_file_and_console(capsys, tmp_path):
    """Recipe callbacks run before the metrics file and the console, so what they add is reported."""
    data = "{name: clrun/synthetic, num_images: 64, num_classes: 4}"
    knn = f"[{{name: clrun/knn, k: 5, every: 1, train: {data}, test: {data}}}]"
    code, out, err = cl_run(capsys, TINY, "train.epochs=2", f"run.dir={tmp_path}", f"callbacks={knn}")
    assert code == 0, err
    run = tmp_path / "tiny"
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert 0.0 <= summary["knn_top1"] <= 1.0 and 0.0 <= summary["knn_top1_projector"] <= 1.0
    epochs = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    assert "knn_top1" in epochs[0]  # every: 1, evaluated after epoch 1 of 2
    # The final summary table has the callback's result, printed after the callback's own line.
    table = out[out.index("done: 2 epochs"):].splitlines()[1:]
    assert any(line.split()[0] == "knn_top1" and line.count("%") == 2 for line in table)
    assert out.index("kNN top-1 (k=5) on 64 test images") < out.index("done: ")


def test_resume_continues_the_run(trained, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    before = read_metrics(run)
    elsewhere = tmp_path / "elsewhere"
    code, out, err = cl_run(capsys, TINY, "train.epochs=3", f"run.dir={elsewhere}", "--resume", run)
    assert code == 0, err
    assert f"run folder: {run}" in out.splitlines()
    assert not elsewhere.exists()  # a resumed run stays in its own folder

    records = read_metrics(run)
    assert records[: len(before)] == before  # appended, not rewritten
    new = records[len(before):]
    assert [(r["epoch"], r["step"]) for r in new if r["kind"] == "epoch"] == [(3, 12)]
    assert [(r["epoch"], r["step"]) for r in new if r["kind"] == "step"] == [(3, s) for s in range(9, 13)]
    assert [(r["epoch"], r["step"]) for r in records if r["kind"] == "epoch"] == [(1, 4), (2, 8), (3, 12)]

    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert (summary["epoch"], summary["step"]) == (3, 12)
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["step"]) == (3, 12)


def test_resume_from_the_checkpoint_file(trained, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    code, out, err = cl_run(capsys, TINY, "train.epochs=3", "--resume", run / "checkpoint.pt")
    assert code == 0, err
    assert [(r["epoch"], r["step"]) for r in read_metrics(run) if r["kind"] == "epoch"][-1] == (3, 12)


def test_resume_missing_path_exits_2(capsys, tmp_path):
    missing = tmp_path / "no-such-run"
    code, out, err = cl_run(capsys, TINY, f"run.dir={tmp_path / 'runs'}", "--resume", missing)
    assert code == 2
    assert err.startswith("cl-run: error: --resume: no checkpoint at ")
    assert str(missing) in err
    assert not (tmp_path / "runs").exists()


def test_resume_folder_without_checkpoint_exits_2(capsys, tmp_path):
    code, out, err = cl_run(capsys, TINY, f"run.dir={tmp_path / 'runs'}", "--resume", tmp_path)
    assert code == 2
    assert err == (f"cl-run: error: --resume: no checkpoint at {tmp_path / 'checkpoint.pt'} "
                   "(pass a run folder holding checkpoint.pt, or the checkpoint file itself)\n")


# -- a non-finite loss stops the run --------------------------------------------------------------

# A NaN normalization mean makes every input NaN, so the loss is NaN on the very first step, whatever
# the weights and the data (a temperature that overflows is refused when the loss is built).
NAN_OVERRIDES = ("data.mean=[.nan,0.0,0.0]", "data.std=[1.0,1.0,1.0]")


def test_nan_loss_stops_with_exit_1(capsys, tmp_path):
    code, out, err = cl_run(capsys, TINY, *NAN_OVERRIDES, f"run.dir={tmp_path}")
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("cl-run: training stopped: ")]
    assert "the loss is nan at epoch 1, step 1" in line
    assert "no optimizer step was taken from that step on" in line
    run = tmp_path / "tiny"
    assert not (run / "checkpoint.pt").exists()
    if (run / "metrics.jsonl").exists():  # no step was applied, so none was logged
        assert [r for r in read_metrics(run) if r["kind"] == "step"] == []


def test_nan_loss_before_any_checkpoint_does_not_point_to_one(capsys, tmp_path):
    # No checkpoint was written yet: the message must not send the user to resume from one.
    code, out, err = cl_run(capsys, TINY, *NAN_OVERRIDES, f"run.dir={tmp_path}")
    assert code == 1
    assert not (tmp_path / "tiny" / "checkpoint.pt").exists()
    assert "last good checkpoint is in" not in err
