"""``--dry-run``: every training run a scale would make, loaded by ``clrun.load_recipe`` and trained by none.

Loading validates a recipe with its overrides the way a run starts (every key, component name and argument
against the schema and the components' signatures), in a few seconds and without a GPU: the GPU scale's
runs, which only a GPU machine trains, are checked here on any machine before its few minutes are spent.
"""

from __future__ import annotations

import tempfile
from typing import Any

from gpu_check import compiling, probe, recipes, smoke, syncs, throughput
from gpu_check.context import Context
from gpu_check.record import Section

SECTION_PLANS = {"smoke": smoke.planned, "syncs": syncs.planned, "throughput": throughput.planned,
                 "compile": compiling.planned}


def load_one(planned: recipes.Planned) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gpu-check-plan-") as folder:
        recipe = probe.load(planned, folder)
    return {"recipe": planned.recipe.name, "batch": recipe.data.batch_size, "max_steps": recipe.train.max_steps,
            "overrides": list(planned.overrides)}


def run(section: Section, ctx: Context, sections: list[str]) -> None:
    for name in sections:
        if name in SECTION_PLANS:
            for planned in SECTION_PLANS[name](ctx):
                section.run(f"{name}/{planned.item}", lambda p=planned: load_one(p))
