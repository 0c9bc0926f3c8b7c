"""clrun/tensorboard: the event files hold what metrics.jsonl holds; a missing package is a clear error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import clrun

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
DATA = "{name: clrun/synthetic, num_images: 64, num_classes: 4, seed: 1}"


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.usefixtures("no_report")  # the report is not under test here: skip its plots
def test_event_files_hold_the_runs_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Listed before the probe, the logger still sees what the probe adds (it writes after the others).
    callbacks = f"[{{name: clrun/tensorboard, every_steps: 2}}, {{name: clrun/online_probe, test: {DATA}}}]"
    recipe = clrun.load_recipe(TINY, ["train.epochs=2", f"run.dir={tmp_path}", f"callbacks={callbacks}"])
    run = clrun.train(recipe)
    events = EventAccumulator(str(run.directory / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])

    steps = records(run.directory, "step")
    assert len(steps) == 8
    logged = [(e.step, e.value) for e in events.Scalars("step/loss")]
    assert logged == [(r["step"], np.float32(r["loss"])) for r in steps if r["step"] % 2 == 0]  # every_steps: 2
    assert {"step/lr", "step/online_train_top1"} <= scalars

    epochs = records(run.directory, "epoch")
    assert [(e.step, e.value) for e in events.Scalars("epoch/loss")] == [(r["step"], np.float32(r["loss"])) for r in epochs]
    assert [e.value for e in events.Scalars("epoch/epoch")] == [1, 2]
    final = records(run.directory, "final")[0]
    for key in ("loss", "online_top1", "online_top1_projector"):
        (event,) = events.Scalars(f"final/{key}")
        assert (event.step, event.value) == (8, np.float32(final[key])), key

    (text,) = events.Tensors("recipe/text_summary")  # add_text("recipe", ...)
    recipe_yaml = (run.directory / "recipe.yaml").read_text(encoding="utf-8")
    assert recipe_yaml in text.tensor_proto.string_val[0].decode("utf-8")


def test_a_missing_tensorboard_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    with pytest.raises(clrun.UserError) as info:
        clrun.create("callback", "clrun/tensorboard")
    assert str(info.value) == "clrun/tensorboard needs the tensorboard package: pip install 'cl-run[tensorboard]'"
