"""The ``cl-run`` command line.

    cl-run RECIPE [dotted.key=value ...] [--resume RUN_OR_CHECKPOINT]   train
    cl-run check RECIPE [dotted.key=value ...]                          validate, build, one CPU batch
    cl-run components [KIND] [PATTERN]                                  what can be selected
    cl-run plugins                                                      loaded and broken plugins

Exit codes: 0 success, 1 training failed, 2 bad input (recipe, data, plugin), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from clrun import plugin_manager
from clrun.component import KINDS
from clrun.errors import TrainingHalted, UserError
from clrun.recipe.problems import RecipeError

COMMANDS = ("train", "check", "components", "plugins")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cl-run", description="Contrastive representation learning from YAML recipes.",
                                epilog="Without a command, `cl-run RECIPE ...` trains.")
    p.add_argument("--strict-plugins", action="store_true", help="fail when any installed plugin fails to load")
    p.add_argument("--no-plugins", action="store_true", help="load only the built-in plugins (no entry points)")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe (the default command)")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.epochs=2")
    t.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue a run from its folder or checkpoint file")
    c = sub.add_parser("check", help="validate a recipe, build it on the CPU and push one tiny batch through")
    c.add_argument("recipe")
    c.add_argument("overrides", nargs="*")
    ls = sub.add_parser("components", help="list registered components")
    ls.add_argument("kind", nargs="?", choices=KINDS)
    ls.add_argument("pattern", nargs="?", help="fnmatch pattern on the name, e.g. 'timm/vit_*'")
    sub.add_parser("plugins", help="list loaded plugins and broken ones with their errors")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `cl-run RECIPE ...` is `cl-run train RECIPE ...`: insert the command after the global flags.
    flags = [a for a in argv[:2] if a in ("--strict-plugins", "--no-plugins")]
    rest = argv[len(flags):]
    if rest and rest[0] not in COMMANDS and not rest[0].startswith("-"):
        argv = flags + ["train"] + rest
    args = parser().parse_args(argv)
    warnings.simplefilter("default", plugin_manager.PluginWarning)
    try:
        plugin_manager.set_default_registry(
            plugin_manager.load_registry(autoload=False if args.no_plugins else None, strict=True if args.strict_plugins else None)
        )
        return COMMAND_FUNCTIONS[args.command](args)
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        print(f"cl-run: {len(exc.problems)} problem(s); nothing was run", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"cl-run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cl-run: interrupted", file=sys.stderr)
        return 130


def cmd_train(args) -> int:
    from clrun.api import load_recipe
    from clrun.training.loop import train
    from clrun.training.step import NonFiniteLossError

    recipe = load_recipe(args.recipe, args.overrides)
    try:
        run = train(recipe, resume=args.resume)
    except NonFiniteLossError as exc:
        print(f"cl-run: training stopped: {exc}", file=sys.stderr)
        return 1
    except TrainingHalted as exc:
        print(f"cl-run: training halted: {exc}", file=sys.stderr)
        return 1
    print(f"run folder: {run.directory}")
    return 0


def cmd_check(args) -> int:
    from clrun.api import load_recipe
    from clrun.training.check import check

    recipe = load_recipe(args.recipe, args.overrides)
    for line in check(recipe):
        print(f"  {line}")
    print(f"{args.recipe}: OK")
    return 0


def cmd_components(args) -> int:
    registry = plugin_manager.default_registry()
    found = registry.list(args.kind, args.pattern)
    for c in found:
        print(f"{c.kind:<13} {c.name:<40} {c.summary[:70]:<70}  [{c.provider}]")
    if not found:
        print("no components match", file=sys.stderr)
        return 1
    return 0


def cmd_plugins(args) -> int:
    registry = plugin_manager.default_registry()
    for p in registry.plugins:
        print(f"ok      {p.name:<40} {p.dist} {p.version}  ({p.components} components)")
    for b in registry.broken:
        error = b.error.replace("\n", "\n" + " " * 10)  # keep multi-line errors (pluggy's) indented
        print(f"BROKEN  {b.name:<40} {b.dist} {b.version}  {error}")
    if not registry.autoload:
        print("(entry-point autoloading is off: only built-ins are loaded)")
    return 0


COMMAND_FUNCTIONS = {"train": cmd_train, "check": cmd_check, "components": cmd_components, "plugins": cmd_plugins}
