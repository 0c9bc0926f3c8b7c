"""The README's two commands stay what CI runs.

`.ci/run` reads the quickstart command and the overrides that shorten it from README.md
(`.ci/readme_command.py`) and runs them in a fresh clone; these tests keep that command well formed,
its torch pins those the tests run with, its shortened run short, and the Python versions the README,
pyproject's classifiers and tox's environments name the same.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

import clrun

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
TESTED_VERSIONS = ["3.10", "3.11", "3.12", "3.13"]

pytestmark = pytest.mark.usefixtures("registry")


def _load_readme_command():
    spec = importlib.util.spec_from_file_location("readme_command", REPO / ".ci" / "readme_command.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_command = _load_readme_command()


def tox_config() -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPO / "tox.ini")
    return config


def test_the_quickstart_command_installs_from_the_os_then_pins_torch_like_the_tests():
    command = readme_command.first_command(README.read_text(encoding="utf-8"))
    steps = [step.strip() for step in command.split("&&")]
    assert steps[0] == "apt-get update"
    # A stock Debian/Ubuntu has no venv module (ensurepip) for its Python; the data comes from the OS.
    assert set(shlex.split(steps[1])) >= {"apt-get", "install", "-y", "python3-venv", "dataset-fashion-mnist"}
    assert steps[2] == "python3 -m venv .venv"
    pins = {arg for arg in shlex.split(steps[3]) if "==" in arg}
    tox_pins = {line.strip() for line in tox_config()["testenv"]["deps"].splitlines() if "==" in line}
    assert pins == tox_pins == {"torch==2.14.1", "torchvision==0.29.1"}
    assert steps[-1] == ".venv/bin/cl-run recipes/quickstart.yaml"


def test_the_shortened_quickstart_is_valid_and_every_data_set_it_reads_is_a_subset():
    text = README.read_text(encoding="utf-8")
    overrides = shlex.split(readme_command.shortened_overrides(text))
    recipe = clrun.load_recipe(REPO / "recipes" / "quickstart.yaml", overrides=overrides)
    assert recipe.train.max_steps == 4
    datasets = {"data.dataset": recipe.data.dataset}
    for index, callback in enumerate(recipe.callbacks):
        for key, value in callback.params.items():
            if getattr(value, "path", None) == f"callbacks.{index}.{key}":
                datasets[value.path] = value
    assert {"callbacks.0.train", "callbacks.0.test"} <= set(datasets)
    # A full split here (a new evaluator in the quickstart without an override) would make CI's
    # README step embed 60k images: add its subset to the README's overrides.
    full = [path for path, spec in datasets.items() if "subset" not in spec.params]
    assert full == []


def test_main_prints_the_command_with_the_shortened_overrides_appended(capsys):
    assert readme_command.main(["--shortened", str(README)]) == 0
    printed = capsys.readouterr().out.strip()
    text = README.read_text(encoding="utf-8")
    assert printed == f"{readme_command.first_command(text)} {readme_command.shortened_overrides(text)}"
    assert readme_command.main([]) == 2
    assert capsys.readouterr().err.strip() == readme_command.USAGE


SECTION = "# cl-run\n\n## Two commands\n\nText.\n\n"


@pytest.mark.parametrize(
    ("readme", "message"),
    [
        ("# cl-run\n\n## Install\n", "README.md: no '## Two commands' heading; CI reads the quickstart command from that section"),
        (SECTION + "## Next\n\n```bash\nls\n```\n",
         "README.md: no ```bash block under '## Two commands'; the first one is the quickstart command"),
        (SECTION + "```bash\napt-get update\n.venv/bin/cl-run recipes/quickstart.yaml\n```\n",
         "README.md:8: the quickstart command must be one line (joined with &&), found 2 lines"),
        (SECTION + "```bash\n.venv/bin/cl-run recipes/quickstart.yaml train.epochs=1\n```\n",
         "README.md:8: the quickstart command must end with `.venv/bin/cl-run recipes/quickstart.yaml`, "
         "so overrides can be appended to it"),
        (SECTION + "```bash\n.venv/bin/cl-run recipes/quickstart.yaml\n",
         "README.md:7: the ```bash block is not closed"),
    ],
)
def test_a_readme_without_a_runnable_quickstart_command_is_an_error_naming_the_line(readme, message):
    with pytest.raises(readme_command.ReadmeError) as info:
        readme_command.first_command(readme)
    assert str(info.value) == message


def test_missing_shortened_overrides_are_an_error():
    readme = SECTION + "```bash\n.venv/bin/cl-run recipes/quickstart.yaml\n```\nAppend `train.epochs=1`.\n"
    with pytest.raises(readme_command.ReadmeError) as info:
        readme_command.shortened_overrides(readme)
    assert str(info.value) == (
        "README.md: no inline code span starting with `train.max_steps=` under '## Two commands'; "
        "CI appends those overrides to the quickstart command to shorten it"
    )


def test_the_tested_python_versions_agree_in_tox_pyproject_and_readme():
    envlist = [env.strip() for env in tox_config()["tox"]["envlist"].split(",")]
    assert envlist == [f"py{v.replace('.', '')}" for v in TESTED_VERSIONS]
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    classifiers = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    assert classifiers == TESTED_VERSIONS
    assert 'requires-python = ">=3.10"' in pyproject
    section = README.read_text(encoding="utf-8").split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert "Python 3.10 to 3.13" in section
