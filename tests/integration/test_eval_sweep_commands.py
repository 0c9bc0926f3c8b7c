"""``cl-run eval``, ``export``, ``report`` and ``sweep`` on tiny real runs, through ``clrun.cli.main``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from clrun import plugin_manager
from clrun.cli import main
from clrun.export import load_encoder

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
KNN = """callbacks:
  - name: clrun/knn
    k: 5
    train: {name: clrun/synthetic, num_images: 64}
    test: {name: clrun/synthetic, num_images: 32, seed: 1}
"""


@pytest.fixture(autouse=True)
def shared_registry(registry, monkeypatch):
    monkeypatch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)


def cl_run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory, registry, reports_skipped) -> Path:
    """One 2-epoch tiny run through the command line, trained once for the module (without its report:
    the commands under test write it)."""
    folder = tmp_path_factory.mktemp("trained")
    with reports_skipped(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(plugin_manager, "load_registry", lambda **kwargs: registry)
        assert main([str(TINY), f"run.dir={folder}", "train.epochs=2"]) == 0
    return folder / "tiny"


@pytest.fixture
def run_folder(trained_folder, tmp_path) -> Path:
    """A copy of the trained run folder that the test may change (its evaluations and report)."""
    return Path(shutil.copytree(trained_folder, tmp_path / "tiny"))


@pytest.mark.slow  # embeds the 60k/10k splits for every evaluator of the file (~5 s)
def test_eval_runs_the_evaluators_of_a_file_and_records_them(run_folder, tmp_path, capsys):
    knn_file = tmp_path / "knn.yaml"
    knn_file.write_text(KNN, encoding="utf-8")
    code, out, err = cl_run(capsys, "eval", run_folder, "--with", knn_file)
    assert code == 0, err
    record = json.loads((run_folder / "eval.json").read_text(encoding="utf-8"))
    assert record["epoch"] == 2 and record["checkpoint"] == str(run_folder / "checkpoint.pt")
    assert set(record["results"]) == {"knn_top1", "knn_top1_projector"}
    backbone = 100 * record["results"]["knn_top1"]
    assert any(line.startswith("knn_top1") and f"{backbone:.2f}%" in line for line in out.splitlines())
    # the same checkpoint evaluated again, from the file itself and with a changed k, gives a new record
    code, _, err = cl_run(capsys, "eval", run_folder / "checkpoint.pt", "--with", knn_file, "callbacks.0.k=1")
    assert code == 0, err
    assert json.loads((run_folder / "eval.json").read_text(encoding="utf-8"))["overrides"] == ["callbacks.0.k=1"]
    assert "eval.json" in (run_folder / "report.md").read_text(encoding="utf-8")


def test_eval_without_an_evaluator_and_without_a_checkpoint(run_folder, tmp_path, capsys):
    code, _, err = cl_run(capsys, "eval", run_folder)
    assert code == 2
    assert "cl-run: error: eval: the recipe's callbacks have no evaluator (a clrun.Evaluator callback)" in err
    code, _, err = cl_run(capsys, "eval", tmp_path)
    assert code == 2
    assert f"cl-run: error: eval: no checkpoint at {tmp_path / 'checkpoint.pt'}" in err


def test_eval_with_a_bad_section_file_names_its_line(run_folder, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("callbacks:\n  - name: clrun/knnn\n", encoding="utf-8")
    code, _, err = cl_run(capsys, "eval", run_folder, "--with", bad)
    assert code == 2
    assert f"{bad}:2:" in err and "clrun/knn" in err  # the line and a did-you-mean


def test_export_writes_an_encoder_that_loads_back(run_folder, tmp_path, capsys):
    out_file = tmp_path / "enc.safetensors"
    code, out, err = cl_run(capsys, "export", run_folder, "-o", out_file)
    assert code == 0, err
    assert out.strip() == f"encoder: {out_file}"
    exported, at_end = load_encoder(out_file), load_encoder(run_folder / "encoder.safetensors")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(exported(x), at_end(x))  # the run's own export and the command's agree


def test_report_rewrites_a_run_folders_report(run_folder, tmp_path, capsys):
    assert not (run_folder / "report.md").exists()  # trained without its report
    code, out, _ = cl_run(capsys, "report", run_folder)
    assert code == 0 and out.strip() == f"report: {run_folder / 'report.md'}"
    assert "## Health" in (run_folder / "report.md").read_text(encoding="utf-8")
    code, _, err = cl_run(capsys, "report", tmp_path)
    assert code == 2 and f"report: {tmp_path} is not a run folder (it has no recipe.yaml)" in err


@pytest.mark.usefixtures("no_report")  # the variants' own reports are not under test: the sweep's table is
def test_sweep_trains_every_value_and_tabulates_them(tmp_path, capsys):
    code, out, err = cl_run(capsys, "sweep", TINY, "loss.temperature=0.1,0.5", "train.epochs=1", f"run.dir={tmp_path}")
    assert code == 0, err
    folder = tmp_path / "tiny-sweep"
    assert f"sweep table: {folder / 'sweep.md'}" in out
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["temperature=0.1", "temperature=0.5"]
    for value in ("0.1", "0.5"):
        recipe = (folder / f"temperature={value}" / "recipe.yaml").read_text(encoding="utf-8")
        assert f"temperature: {value}" in recipe
    with open(folder / "sweep.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["value"] for r in rows] == ["0.1", "0.5"]
    assert all(r["alignment_projector"] and r["uniformity_projector"] for r in rows)
    assert (folder / "sweep.png").stat().st_size > 0


def test_sweep_checks_every_variant_before_training_any(tmp_path, capsys):
    code, _, err = cl_run(capsys, "sweep", TINY, "loss.temperature=0.1,-1", f"run.dir={tmp_path}")
    assert code == 2
    assert "loss.temperature: must be a number >= 0.001" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing trained, no folder made


def test_sweep_without_a_list_is_an_error(tmp_path, capsys):
    code, _, err = cl_run(capsys, "sweep", TINY, "loss.temperature=0.1", f"run.dir={tmp_path}")
    assert code == 2
    assert "cl-run: error: sweep: nothing to sweep; give at least one dotted.key=value1,value2" in err


def test_sweep_values_keep_commas_inside_brackets():
    from clrun.commands.sweep import parse_arguments

    fixed, swept = parse_arguments(["views.0.transforms.0.size=[28, 28],[24, 24]", "train.epochs=1"])
    assert fixed == ["train.epochs=1"]
    assert swept == [("views.0.transforms.0.size", ["[28, 28]", "[24, 24]"])]
