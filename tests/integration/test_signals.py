"""SIGTERM (a cluster's preemption) and SIGINT stop the run at the next step with a mid-epoch checkpoint
and the report; resuming from it ends bit-exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import clrun
from clrun.run_folder import RunFolder
from clrun.training import checkpointing
from clrun.training.step import Step
from clrun.training.stop import Stopped

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


def recipe(tmp_path: Path, name: str):
    return clrun.load_recipe(TINY, [f"run.dir={tmp_path}", f"run.name={name}", "train.epochs=3", "health.enabled=false"])


def signal_after_step(monkeypatch, at: int, signum: int = signal.SIGTERM) -> None:
    step = Step.__call__

    def step_then_signal(self, images, *places):
        result = step(self, images, *places)
        if self.run.step + 1 == at:
            os.kill(os.getpid(), signum)  # delivered now; the loop notices at the step's end
        return result

    monkeypatch.setattr(Step, "__call__", step_then_signal)


def tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(tensors(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
    return out


def records(folder: RunFolder, kind: str) -> list[dict]:
    return [r for r in map(json.loads, folder.metrics.read_text().splitlines()) if r["kind"] == kind]


def test_sigterm_mid_epoch_checkpoints_and_the_resume_is_bit_exact(tmp_path, monkeypatch):
    with monkeypatch.context() as patched:
        signal_after_step(patched, at=6)  # 4 steps an epoch: the 2nd batch of epoch 2
        with pytest.raises(Stopped) as info:
            clrun.train(recipe(tmp_path, "stopped"))
    folder = RunFolder(tmp_path / "stopped")
    assert info.value.exit_code == 143
    assert str(info.value) == f"stopped by SIGTERM after step 6 (in epoch 2): checkpoint written; continue with --resume {folder.path}"
    saved = checkpointing.load(folder.checkpoint)
    assert (saved["epoch"], saved["step"], saved["position"]["batches"]) == (1, 6, 2)
    assert folder.report.is_file() and not folder.lock.exists()

    resumed = clrun.train(recipe(tmp_path, "stopped"), resume=folder.path)
    straight = clrun.train(recipe(tmp_path, "straight"))
    a, b = tensors(checkpointing.load(resumed.folder.checkpoint)), tensors(checkpointing.load(straight.folder.checkpoint))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in records(resumed.folder, "step")] == list(range(1, 13))
    # The interrupted epoch's mean covers all its steps, as the uninterrupted run's does.
    assert [r["loss"] for r in records(resumed.folder, "epoch")] == [r["loss"] for r in records(straight.folder, "epoch")]


@pytest.mark.slow  # two real processes, signalled from outside (~20 s); the in-process test covers the logic
def test_the_command_exits_143_on_sigterm_and_130_on_sigint(tmp_path):
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        name = signal.Signals(signum).name
        run = tmp_path / name
        process = subprocess.Popen(
            [sys.executable, "-m", "clrun", str(TINY), f"run.dir={tmp_path}", f"run.name={name}", "train.epochs=50",
             "health.enabled=false"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "metrics.jsonl").is_file():
            time.sleep(0.2)
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
        assert process.returncode == code, err
        assert f"cl-run: stopped by {name} after step " in err and f"--resume {run}" in err
        assert (run / "report.md").is_file()
        assert checkpointing.load(RunFolder(run).checkpoint)["position"] is not None
