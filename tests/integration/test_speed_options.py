"""The speed options change how a step runs, not what it computes: reduced precision, channels_last
and torch.compile give the same losses as the plain fp32 step, within their numerical precision.

The plain run is trained once for the module and compared with each option's run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import clrun

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


pytestmark = pytest.mark.usefixtures("no_report")  # the report is not under test here


def losses(tmp_path: Path, name: str, *overrides: str) -> tuple[list[float], Path]:
    recipe = clrun.load_recipe(QUICKSTART, [
        # Small steps: bf16 convolutions are emulated, ~10x slower than fp32, on CPUs without AVX512-BF16.
        "data.dataset.subset=512", "data.batch_size=16", "train.epochs=1", "train.max_steps=2",
        "train.progress=false", "health.enabled=false", "callbacks=[]", "train.channels_last=false",
        f"run.dir={tmp_path}", f"run.name={name}", *overrides,
    ])
    run = clrun.train(recipe)
    records = [json.loads(line) for line in (run.directory / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "step"], run.directory


@pytest.fixture(scope="module")
def plain(tmp_path_factory, reports_skipped) -> tuple[list[float], Path]:
    """The plain fp32 run's step losses and run folder (channels_last off, no compiling)."""
    with reports_skipped():
        return losses(tmp_path_factory.mktemp("speed"), "plain")


@pytest.mark.parametrize("option, tolerance", [
    ("train.channels_last=true", 1e-4),
    # bf16 keeps 8 bits of mantissa. Slow: CPUs without AVX512-BF16 emulate its convolutions (~10-15 s here).
    pytest.param("train.precision=bf16", 3e-2, marks=pytest.mark.slow),
])
def test_precision_and_layout_options_train_the_same_steps(plain, tmp_path, option, tolerance):
    plain, _ = plain
    other, _ = losses(tmp_path, "other", option)
    assert len(plain) == len(other) == 2
    assert other == pytest.approx(plain, rel=tolerance)


@pytest.mark.slow
def test_compiled_backbone_trains_the_same_steps_and_exports_the_plain_keys(plain, tmp_path):
    plain, plain_dir = plain
    compiled, compiled_dir = losses(tmp_path, "compiled", "train.compile=true")
    assert compiled == pytest.approx(plain, rel=1e-3)
    # Compiled in place: the exported encoder has the plain module's keys (no "_orig_mod." prefix).
    assert load_file(compiled_dir / "encoder.safetensors").keys() == load_file(plain_dir / "encoder.safetensors").keys()
