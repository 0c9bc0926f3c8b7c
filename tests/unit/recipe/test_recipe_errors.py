"""Golden table of bad recipes: every problem of a file reported at once, as ``file:line:col: error: path: message``.

Each case edits the text of tests/recipes/tiny.yaml (a valid recipe: keep its layout, the line
numbers below refer to it), writes it to a temporary file and expects exactly these error lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import clrun
from clrun.recipe import RecipeError

TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("registry")


def edited(*edits: tuple[str, str]) -> str:
    """tiny.yaml with each ``old`` (which must occur exactly once) replaced by ``new``."""
    text = TINY.read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, f"edit target {old!r} must occur once in tiny.yaml"
        text = text.replace(old, new)
    return text


def problems_of(path: Path) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        clrun.load_recipe(path)
    return info.value


NO_OPTIMIZER = ("optimizer:\n  name: torch/AdamW\n  lr: 1e-3\n\n", "")

CASES = [
    # -- unknown keys, with did-you-mean --------------------------------------------------------
    pytest.param(
        [("train:\n", "trian:\n")],
        ["37:1: error: trian: unknown key 'trian' for a recipe; did you mean 'train'?"],
        id="unknown-section",
    ),
    pytest.param(
        [("  epochs: 1\n", "  epoch: 1\n")],
        ["38:3: error: train.epoch: unknown key 'epoch' for section 'train'; did you mean 'epochs'?"],
        id="unknown-key-in-section",
    ),
    pytest.param(
        [("  temperature: 0.2", "  temperatur: 0.2")],
        ["31:3: error: loss.temperatur: unknown key 'temperatur' for loss 'clrun/ntxent'; did you mean 'temperature'?"],
        id="unknown-key-in-component",
    ),
    pytest.param(
        [("  temperature: 0.2", "  colour: 0.2")],
        ["31:3: error: loss.colour: unknown key 'colour' for loss 'clrun/ntxent'; loss 'clrun/ntxent' takes: temperature"],
        id="unknown-key-in-component-lists-accepted-keys",
    ),
    pytest.param(
        [("        scale: [0.3, 1.0]", "        scales: [0.3, 1.0]")],
        ["18:9: error: views.0.transforms.0.scales: unknown key 'scales' for augmentation "
         "'kornia/RandomResizedCrop'; did you mean 'scale'?"],
        id="unknown-key-in-nested-list-entry",
    ),
    # -- unknown component names ----------------------------------------------------------------
    pytest.param(
        [("timm/test_resnet", "timm/resnet181")],
        ["22:9: error: backbone.name: unknown backbone 'timm/resnet181'; "
         "did you mean 'timm/resnet18' or 'timm/resnet18d' or 'timm/resnet101'?"],
        id="unknown-backbone",
    ),
    pytest.param(
        [("clrun/ntxent", "clrun/ntxnet")],
        ["30:9: error: loss.name: unknown loss 'clrun/ntxnet'; did you mean 'clrun/ntxent' or 'clrun/nnclr' or 'clrun/mae'?"],
        id="unknown-loss",
    ),
    pytest.param(
        [("clrun/ntxent", "clrun/zzzzzz")],
        ["30:9: error: loss.name: unknown loss 'clrun/zzzzzz'; list them with `cl-run components loss`"],
        id="unknown-loss-no-close-match",
    ),
    # -- duplicate keys: the message names the first line -----------------------------------------
    pytest.param(
        [("  temperature: 0.2\n", "  temperature: 0.2\n  temperature: 0.5\n")],
        ["32:3: error: loss.temperature: duplicate key 'temperature' (first set at line 31); keep one"],
        id="duplicate-key",
    ),
    pytest.param(
        [("run:\n  dir: runs\n", "run:\n  dir: runs\ntrain:\n  epochs: 2\n")],
        ["45:1: error: train: duplicate key 'train' (first set at line 37); keep one"],
        id="duplicate-section",
    ),
    # -- wrong types ------------------------------------------------------------------------------
    pytest.param(
        [("  epochs: 1", "  epochs: ten")],
        ["38:11: error: train.epochs: expected an integer, got string 'ten'"],
        id="wrong-type-int",
    ),
    pytest.param(
        [("  progress: false", "  progress: 1")],
        ["40:13: error: train.progress: expected a boolean, got number 1"],
        id="wrong-type-bool",
    ),
    pytest.param(
        # torch's lr is ``float | Tensor``: YAML cannot give a Tensor, so a string is no fallback.
        [("  lr: 1e-3", "  lr: fast")],
        ["35:7: error: optimizer.lr: expected a number, got string 'fast'"],
        id="wrong-type-float-or-tensor",
    ),
    pytest.param(
        [("  device: cpu\n", "  device: cpu\n  precision: fp23\n")],
        ["40:14: error: train.precision: expected one of 'fp32', 'bf16', 'fp16', got string 'fp23'; did you mean 'fp32'?"],
        id="wrong-choice",
    ),
    pytest.param(
        [("run:\n  dir: runs\n", "run: runs\n")],
        ["43:6: error: run: expected a mapping of section 'run''s settings, got string 'runs'"],
        id="section-not-a-mapping",
    ),
    # -- missing required values ------------------------------------------------------------------
    pytest.param(
        [("backbone:\n  name: timm/test_resnet\n\n", "")],
        ["3:1: error: backbone: missing required value for a recipe"],
        id="missing-section",
    ),
    pytest.param(
        [("loss:\n  name: clrun/ntxent\n", "loss:\n")],
        ["30:3: error: loss.name: missing required value: which loss to use (e.g. `cl-run components loss`)"],
        id="component-without-name",
    ),
    pytest.param(
        [("      - name: kornia/RandomHorizontalFlip", "      - p: 0.5")],
        ["19:9: error: views.0.transforms.1.name: missing required value: "
         "which augmentation to use (e.g. `cl-run components augmentation`)"],
        id="list-entry-without-name",
    ),
    # -- YAML 1.1 traps ---------------------------------------------------------------------------
    pytest.param(
        [("  - name: global", "  - name: no")],
        ["13:11: error: views.0.name: expected a string, got boolean false (YAML 1.1 reads no as a boolean: quote it, 'no')"],
        id="yaml11-no-is-a-boolean",
    ),
    pytest.param(
        [("  dir: runs\n", "  dir: runs\n  name: on\n")],
        ["45:9: error: run.name: expected a string, got boolean true (YAML 1.1 reads on as a boolean: quote it, 'on')"],
        id="yaml11-on-is-a-boolean-optional-string",
    ),
    pytest.param(
        [("  epochs: 1", "  epochs: 010")],
        ["38:11: error: train.epochs: 010 reads as octal 8 in YAML 1.1; write it without the leading 0"],
        id="yaml11-octal",
    ),
    pytest.param(
        [("size: [32, 32]", "size: (32, 32)")],
        ["17:15: error: views.0.transforms.0.size: expected a list of 2 (an integer, an integer), "
         "got string '(32, 32)' (YAML has no tuples: write a list, [32, 32])"],
        id="tuple-for-a-pair",
    ),
    pytest.param(
        # kornia's scale is ``Tensor | tuple[float, float]``: a string must not slip through the Tensor member.
        [("scale: [0.3, 1.0]", "scale: (0.2, 1.0)")],
        ["18:16: error: views.0.transforms.0.scale: expected a list of 2 (a number, a number), "
         "got string '(0.2, 1.0)' (YAML has no tuples: write a list, [0.2, 1.0])"],
        id="tuple-for-tensor-or-pair",
    ),
    # -- keys cl-run sets itself ------------------------------------------------------------------
    pytest.param(
        [("  hidden_dim: 64", "  in_dim: 512\n  hidden_dim: 64")],
        ["26:3: error: projector.in_dim: 'in_dim' is set by cl-run itself for projector 'clrun/mlp'; remove it"],
        id="injected-projector-in-dim",
    ),
    pytest.param(
        [("  lr: 1e-3\n", "  lr: 1e-3\n  params: []\n")],
        ["36:3: error: optimizer.params: 'params' is set by cl-run itself for optimizer 'torch/AdamW'; remove it"],
        id="injected-optimizer-params",
    ),
    # -- several problems: all reported, sorted by position -----------------------------------------
    pytest.param(
        [
            ("seed: 0", "seed: zero"),
            ("  - name: global", "  - name: no"),
            ("timm/test_resnet", "timm/resnet181"),
            ("  temperature: 0.2", "  temperatur: 0.2"),
            NO_OPTIMIZER,  # reported last by the validator (at the recipe's start), sorted first
            ("  epochs: 1", "  epochs: ten"),
        ],
        [
            "3:1: error: optimizer: missing required value for a recipe",
            "3:7: error: seed: expected an integer, got string 'zero'",
            "13:11: error: views.0.name: expected a string, got boolean false (YAML 1.1 reads no as a boolean: quote it, 'no')",
            "22:9: error: backbone.name: unknown backbone 'timm/resnet181'; "
            "did you mean 'timm/resnet18' or 'timm/resnet18d' or 'timm/resnet101'?",
            "31:3: error: loss.temperatur: unknown key 'temperatur' for loss 'clrun/ntxent'; did you mean 'temperature'?",
            "34:11: error: train.epochs: expected an integer, got string 'ten'",
        ],
        id="several-problems-sorted",
    ),
    pytest.param(
        # A duplicate key must not hide the file's other problems: a user fixes them all in one go.
        [
            ("  temperature: 0.2\n", "  temperature: 0.2\n  temperature: 0.5\n"),
            ("  epochs: 1\n", "  epoch: 1\n"),
        ],
        [
            "32:3: error: loss.temperature: duplicate key 'temperature' (first set at line 31); keep one",
            "39:3: error: train.epoch: unknown key 'epoch' for section 'train'; did you mean 'epochs'?",
        ],
        id="duplicate-key-and-other-problems",
    ),
    # -- invalid YAML -----------------------------------------------------------------------------
    pytest.param(
        [("  batch_size: 16", " batch_size: 16")],
        ["9:2: error: invalid YAML: expected <block end>, but found '<block mapping start>'"],
        id="yaml-bad-indentation",
    ),
    pytest.param(
        [("  batch_size: 16", "\tbatch_size: 16")],
        ["9:1: error: invalid YAML: found character '\\t' that cannot start any token"],
        id="yaml-tab",
    ),
    pytest.param(
        [("  epochs: 1", "  epochs: 1: 2")],
        ["38:12: error: invalid YAML: mapping values are not allowed here"],
        id="yaml-mapping-value-in-scalar",
    ),
]


@pytest.mark.parametrize("edits, expected", CASES)
def test_bad_recipe(tmp_path, edits, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(edited(*edits), encoding="utf-8")
    error = problems_of(path)
    lines = [f"{path}:{line}" for line in expected]
    assert [str(p) for p in error.problems] == lines
    assert str(error).splitlines() == lines


def test_tiny_recipe_is_valid():
    recipe = clrun.load_recipe(TINY)
    assert recipe.data.dataset.name == "clrun/synthetic"
    assert recipe.backbone.name == "timm/test_resnet"
    assert [t.name for t in recipe.views[0].transforms] == ["kornia/RandomResizedCrop", "kornia/RandomHorizontalFlip"]
    assert recipe.views[0].transforms[0].params == {"size": (32, 32), "scale": (0.3, 1.0)}
    assert recipe.source == str(TINY)


def test_yaml11_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads `1e-3` (no dot) as the string "1e-3"; where a number is wanted cl-run takes it.
    path = tmp_path / "lr.yaml"
    path.write_text(edited(("  lr: 1e-3\n", "  lr: 1e-3\n  weight_decay: 5E-4\n")), encoding="utf-8")
    recipe = clrun.load_recipe(path)
    assert recipe.optimizer.params == {"lr": 0.001, "weight_decay": 0.0005}
    assert all(type(v) is float for v in recipe.optimizer.params.values())


def test_problem_fields(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(edited(("  epochs: 1\n", "  epoch: 1\n")), encoding="utf-8")
    (problem,) = problems_of(path).problems
    assert (problem.file, problem.line, problem.col, problem.path) == (str(path), 38, 3, "train.epoch")
    assert problem.message == "unknown key 'epoch' for section 'train'; did you mean 'epochs'?"


def test_section_check_names_the_field(tmp_path):
    # A section's own range checks (here data.batch_size >= 1) must point at the bad value, not at
    # the start of the section, and name the field's dotted path.
    path = tmp_path / "bad.yaml"
    path.write_text(edited(("  batch_size: 16", "  batch_size: 0")), encoding="utf-8")
    (line,) = str(problems_of(path)).splitlines()
    assert line.startswith(f"{path}:9:15: error: data.batch_size: "), line
    assert "must be >= 1, got 0" in line


def test_a_view_count_no_memory_could_hold_is_refused_before_anything_is_built(tmp_path):
    """Found by the mutation test: a count of 1e23 raised an OverflowError from building the views."""
    path = tmp_path / "bad.yaml"
    path.write_text(edited(("    count: 2\n", "    count: 99999999999999999999999\n")), encoding="utf-8")
    (line,) = str(problems_of(path)).splitlines()
    assert line == (f"{path}:14:12: error: views.0.count: must be <= 64 (multi-crop recipes draw 2 global and 6-10 "
                    f"local views), got 99999999999999999999999")


def test_empty_file_lists_every_required_section(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert str(problems_of(path)).splitlines() == [
        f"{path}:1:1: error: {name}: missing required value for a recipe"
        for name in ("data", "views", "backbone", "projector", "loss", "optimizer")
    ]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    (problem,) = problems_of(path).problems
    assert str(problem) == f"{path}:1:1: error: cannot read recipe: No such file or directory"
