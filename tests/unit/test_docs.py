"""The README stays a short newcomer's page and the documentation's facts stay tied to their sources.

The site itself is built by `.ci/run` (`mkdocs build --strict`: links, anchors, the navigation and the
API reference are checked there); these are the checks that need no documentation tools.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
METHODS = REPO / "docs" / "guides" / "methods.md"


def test_the_readme_is_short_and_carries_no_measurement_dates():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 250
    # Dated measurements and CI timings belong in bench/RESULTS.md and the docs, which say when.
    assert re.findall(r"\b20\d\d-\d\d-\d\d\b", text) == []


def test_the_readmes_relative_links_name_files_that_exist():
    text = README.read_text(encoding="utf-8")
    targets = [t.split("#", 1)[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert targets, "the README links to the docs"
    missing = [t for t in targets if t and not (REPO / t).exists()]
    assert missing == []


def test_the_methods_guide_has_the_markers_the_benchmark_writes_between():
    text = METHODS.read_text(encoding="utf-8")
    assert text.count("<!-- bench/fmnist_methods.py: start -->") == 1
    assert text.count("<!-- bench/fmnist_methods.py: end -->") == 1


def test_the_cifar_table_quotes_each_recipe_header_and_its_evaluation():
    """Each row's published number is the one its recipe's header cites, and that header says what kind
    of evaluation the number is (solo-learn's CIFAR tables are online linear probes)."""
    section = METHODS.read_text(encoding="utf-8").split("## CIFAR-10 and the published numbers", 1)[1]
    rows = re.findall(r"^\| [^|]+ \| `(\w+_cifar10_r18\.yaml)` \| ([\d.]+%) \|$", section, re.MULTILINE)
    assert len(rows) == 10
    for recipe, number in rows:
        header = "".join(line for line in (REPO / "recipes" / recipe).read_text(encoding="utf-8").splitlines()
                         if line.startswith("#"))
        assert f"after 1000 epochs, {number}, is an online linear probe's" in header, recipe
        assert "compare it with clrun/online_probe" in header, recipe
