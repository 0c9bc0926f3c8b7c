"""The ``cl-run`` command line.

    cl-run RECIPE [dotted.key=value ...] [--resume RUN_OR_CHECKPOINT]   train
    cl-run check RECIPE [dotted.key=value ...]                          validate, build, one CPU batch
    cl-run eval RUN_OR_CHECKPOINT [dotted.key=value ...] [--with FILE] [-o DIR]  run the recipe's evaluators again
    cl-run export RUN_OR_CHECKPOINT [-o FILE.safetensors]               the encoder for timm and others
    cl-run export RUN_OR_CHECKPOINT --hub-folder DIR [--push USER/REPO]  a Hugging Face model folder (and upload)
    cl-run embed SOURCE IMAGES -o FILE.parquet [--nearest K]            a table of image embeddings
    cl-run sweep RECIPE key=v1,v2,... [dotted.key=value ...]            one run per value, one table
    cl-run report RUN [-o DIR]                                          (re)write a run's plots and report
    cl-run shards IMAGE_FOLDER OUTPUT [--shard-size N]                  an image folder as tar shards
    cl-run components [KIND] [PATTERN]                                  what can be selected
    cl-run plugins                                                      loaded and broken plugins

Exit codes: 0 success, 1 training failed (also a plugin's callback or data set raising while it runs),
2 bad input (recipe, data, a plugin that fails to load or to build, a full, read-only or forbidden disk),
130 / 143 interrupted (SIGINT / SIGTERM).

Under torchrun (``torchrun ... -m clrun RECIPE``, every process runs this command), a failure is one line from
the process that failed, naming it and the strategy:

    cl-run: rank 1 of 2 (train.strategy=ddp): error: clrun/image_folder: cannot read image ...

Several processes that fail the same way make one report between them; a recipe that cannot be read is
reported by rank 0 alone (every process reads the same recipe); a process whose collective fails because
another process is gone says nothing and waits for torchrun to stop it (the other process says why, and
torchrun's summary names it as the root cause). A bug (an unexpected exception) still shows its traceback.
Each process then ends without the interpreter's finalization (``clrun.distributed.exit_process``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
import traceback
import warnings
from typing import NoReturn, Optional

from clrun import plugin_manager
from clrun.component import KINDS
from clrun.errors import ComponentBuildError, ComponentErrors, ComponentFailure, TrainingHalted, UserError
from clrun.recipe.problems import RecipeError
from clrun.recipe.schema import RecipeDeprecationWarning

# Each command imports the machinery it runs inside its function, not here: this module must not import
# torch (seconds), so that `cl-run --help`, argument errors, `components` and `plugins` answer at once.

LOCATED_ERROR = re.compile(r"^(<[^>]+>|\S+):\d+:\d+: error: ")

# Options before the command, with the number of values each takes.
GLOBAL_FLAGS = {"--strict-plugins": 0, "--no-plugins": 0, "--disable-plugin": 1}

COMMANDS = ("train", "check", "eval", "export", "embed", "sweep", "report", "shards", "components", "plugins")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cl-run", description="Contrastive representation learning from YAML recipes.",
                                epilog="Without a command, `cl-run RECIPE ...` trains.")
    p.add_argument("--strict-plugins", action="store_true", help="fail when any installed plugin fails to load")
    p.add_argument("--no-plugins", action="store_true", help="load only the built-in plugins (no entry points)")
    p.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                   help="leave out the installed plugin NAME (its entry-point name, see `cl-run plugins`); repeatable")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe (the default command)")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.epochs=2")
    t.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue a run from its folder or checkpoint file")
    t.add_argument("--allow-changes", action="store_true",
                   help="with --resume: apply a recipe that changes the training (recorded in the run folder)")
    t.add_argument("-v", "--verbose", action="store_true", help="print every metric each epoch (default: a compact line)")
    c = sub.add_parser("check", help="validate a recipe, build it on the CPU and push one tiny batch through")
    c.add_argument("recipe")
    c.add_argument("overrides", nargs="*")
    c.add_argument("-v", "--verbose", action="store_true",
                   help="with a plugin failure's traceback, and a second step's host syncs by call site")
    e = sub.add_parser("eval", help="evaluate a run or checkpoint with its recipe's evaluator callbacks")
    e.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    e.add_argument("overrides", nargs="*", help="dotted.key=value changes to the run's recipe, e.g. callbacks.0.k=50")
    e.add_argument("--with", dest="sections", metavar="FILE", help="a YAML file whose sections (e.g. callbacks:) replace the recipe's")
    e.add_argument("-o", "--output", metavar="DIR",
                   help="write the results and the report to DIR instead of the run folder (e.g. a read-only one)")
    e.add_argument("-v", "--verbose", action="store_true", help="with the traceback of a plugin's failure")
    x = sub.add_parser("export", help="write a run's encoder as safetensors with its recipe as metadata")
    x.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    x.add_argument("-o", "--output", metavar="FILE", help="default: the encoder file in the run folder")
    x.add_argument("--hub-folder", metavar="DIR", help="write a Hugging Face model folder instead: model.safetensors, "
                   "config.json (timm.create_model('local-dir:DIR', pretrained=True) loads it) and a README.md model card")
    x.add_argument("--license", metavar="ID",
                   help="with --hub-folder: the model card's licence, a Hugging Face identifier (default: other, "
                        "i.e. none chosen; e.g. apache-2.0, cc-by-4.0)")
    x.add_argument("--push", metavar="USER/REPO", help="with --hub-folder: upload the folder to this Hub model repository "
                   "(created if missing; the token comes from HF_TOKEN or the stored `hf auth login`)")
    x.add_argument("--private", action="store_true", help="with --push: create the repository private")
    m = sub.add_parser("embed", help="embed images with a trained encoder into a Parquet table (names, labels, embeddings)")
    m.add_argument("source", metavar="SOURCE", help="a run folder, a checkpoint, an encoder .safetensors or a hub folder")
    m.add_argument("images", metavar="IMAGES", help="a folder of images (one subfolder per class gives labels), a "
                   "folder of shards (cl-run shards), or a data set as YAML: '{name: clrun/image_folder, root: DIR}'")
    m.add_argument("-o", dest="out", required=True, metavar="FILE.parquet", help="the table to write")
    m.add_argument("--features", choices=("backbone", "projector"), default="backbone",
                   help="the backbone's pooled features (default), or the projector's outputs (run folders and "
                        "checkpoints only)")
    m.add_argument("--nearest", type=int, default=0, metavar="K",
                   help="add each image's K nearest neighbours (rows of the table) and their cosine similarities")
    m.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per forward (default 256)")
    m.add_argument("--workers", type=int, metavar="N", help="image decoding processes (default: the recipe's data.num_workers)")
    m.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1...")
    m.add_argument("--report", metavar="DIR", help="also draw the embedding space into DIR: a map of the images "
                   "coloured by label and a grid of images with their nearest neighbours (a report and its plots)")
    m.add_argument("--part-size", type=int, default=10_000, metavar="N",
                   help="images per part file: what a rerun after an interruption does again at most (default 10000)")
    m.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (exit 2) instead of skipping and counting it")
    w = sub.add_parser("sweep", help="train one variant per value of key=v1,v2,... and tabulate them")
    w.add_argument("recipe")
    w.add_argument("overrides", nargs="+", help="key=v1,v2,... (swept) and key=value (fixed)")
    r = sub.add_parser("report", help="write a run folder's plots and report from its files")
    r.add_argument("run", metavar="RUN")
    r.add_argument("-o", "--output", metavar="DIR",
                   help="write the report and its plots to DIR instead of the run folder (e.g. a read-only one)")
    sh = sub.add_parser("shards", help="write an image folder as WebDataset tar shards (for clrun/webdataset)")
    sh.add_argument("source", metavar="IMAGE_FOLDER", help="images, searched recursively; one subfolder per class gives labels")
    sh.add_argument("output", metavar="OUTPUT", help="a new or empty folder for the shards and their index.json")
    sh.add_argument("--shard-size", type=int, default=1000, metavar="N", help="images per shard (default 1000)")
    sh.add_argument("--seed", type=int, default=0, help="the shuffle of the images before writing (default 0)")
    ls = sub.add_parser("components", help="list registered components")
    ls.add_argument("kind", nargs="?", choices=KINDS)
    ls.add_argument("pattern", nargs="?", help="fnmatch pattern on the name, e.g. 'timm/vit_*'")
    pl = sub.add_parser("plugins", help="list loaded plugins and broken ones with their errors")
    pl.add_argument("-v", "--verbose", action="store_true", help="with the traceback of each broken plugin")
    return p


def torchrun_rank() -> Optional[tuple[int, int]]:
    """``(rank, number of processes)`` when torchrun started this process with others; None otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


class Reports:
    """Where this process's error reports go: stderr, and under torchrun once per failure (see the module's
    docstring). ``place`` names the process and the strategy once a training command has read its recipe."""

    place: Optional[str] = None


def report(text: str) -> None:
    """Print the error report ``text`` (its lines start with ``cl-run: `` or a recipe position) on stderr."""
    ranked = torchrun_rank()
    if ranked is None:
        print(text, file=sys.stderr)
    elif Reports.place is None:  # before the recipe was read: every process reads the same one, and fails alike
        if ranked[0] == 0:
            print(text, file=sys.stderr)
    else:
        from clrun import distributed

        if distributed.first_to_report(text):
            print("\n".join(placed(line, Reports.place) for line in text.splitlines()), file=sys.stderr)


def placed(line: str, place: str) -> str:
    """``line`` of an error report with the process's ``place`` after ``cl-run: ``."""
    if line.startswith("cl-run: "):
        return f"cl-run: {place}: {line[len('cl-run: '):]}"
    return f"cl-run: {place}: {line}" if LOCATED_ERROR.match(line) else line


def await_torchrun() -> int:
    """For a process whose collective failed because another process of the group is gone: that process
    reports why, and torchrun, seeing it exit, stops this one with SIGTERM (within its monitor interval,
    0.1 s). Waiting for that rather than exiting keeps torchrun's summary right (its root cause is the
    process that ended first, to the second). Exit code 1 if no SIGTERM comes (it may have come already,
    during the collective, where the training loop's handler took it)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        time.sleep(5)
    except KeyboardInterrupt:
        return 130
    return 1


def peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process of this torchrun group is gone."""
    if torchrun_rank() is None or "torch" not in sys.modules:
        return False
    from clrun import distributed

    return distributed.peer_gone(exc)


def command() -> NoReturn:
    """``python -m clrun`` and ``torchrun -m clrun``: ``main()``, then the end of the process with its exit code.
    Under torchrun, without the interpreter's finalization (``clrun.distributed.exit_process`` says why); a
    bug's traceback is printed first, as Python would (with torch's ``[rankN]:`` prefix)."""
    if torchrun_rank() is None:
        sys.exit(main())
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, a bad option
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    from clrun.distributed import exit_process

    exit_process(code)


def main(argv: list[str] | None = None) -> int:
    Reports.place = None
    argv = list(sys.argv[1:] if argv is None else argv)
    # `cl-run RECIPE ...` is `cl-run train RECIPE ...`: insert the command after the global flags.
    i = 0
    while i < len(argv) and argv[i].split("=", 1)[0] in GLOBAL_FLAGS:
        i += 1 if "=" in argv[i] else 1 + GLOBAL_FLAGS[argv[i]]
    flags, rest = argv[:i], argv[i:]
    if rest and rest[0] not in COMMANDS and not rest[0].startswith("-"):
        argv = flags + ["train"] + rest
    if "--with" in argv[:-1]:  # argparse cannot take overrides after an option: move it to the end
        i = argv.index("--with")
        argv = argv[:i] + argv[i + 2:] + argv[i:i + 2]
    args = parser().parse_args(argv)
    warnings.simplefilter("default", plugin_manager.PluginWarning)
    warnings.formatwarning = format_warning
    try:
        plugin_manager.set_default_registry(plugin_manager.load_registry(
            autoload=False if args.no_plugins else None, strict=True if args.strict_plugins else None,
            disabled=args.disable_plugin))
        code = COMMAND_FUNCTIONS[args.command](args)
        sys.stdout.flush()  # here, not at exit: a reader gone by now (`| head`) is caught below, not a shutdown warning
        return code
    except BrokenPipeError:  # `cl-run components | head`: the reader left; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except RecipeError as exc:
        report(f"{exc}\ncl-run: {len(exc.problems)} problem(s); nothing was run")
        return 2
    except ComponentErrors as exc:
        report(f"{exc}\ncl-run: {len(exc.errors)} component(s) could not be built; nothing was run")
        return 2
    except ComponentBuildError as exc:  # a plugin's bug before anything ran: bad input, named
        return plugin_failure(exc, args, 2)
    except UserError as exc:
        message = str(exc)
        # A message that starts at a recipe position already says "error:" (as recipe problems do).
        report(message if LOCATED_ERROR.match(message) else f"cl-run: error: {message}")
        return 2
    except ComponentFailure as exc:  # a plugin's bug, named (training reports its own)
        return plugin_failure(exc, args, 1)
    except KeyboardInterrupt:
        report("cl-run: interrupted")
        return 130
    except Exception as exc:
        if peer_gone(exc):  # under torchrun: another process failed, and it says why
            return await_torchrun()
        raise  # a bug: its traceback


def plugin_failure(exc: Exception, args, code: int, what: str = "error") -> int:
    """A plugin's exception as one line naming it (its traceback too with ``-v``); returns ``code``."""
    if getattr(args, "verbose", False):  # the plugin author's view: where in their code it failed
        traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
    hint = "" if getattr(args, "verbose", True) else " (-v shows the traceback)"
    report(f"cl-run: {what}: {exc}{hint}")
    return code


_python_format_warning = warnings.formatwarning


def format_warning(message, category, filename, lineno, line=None) -> str:
    """A plugin warning or a deprecated recipe key as one line (Python's default adds the source line that
    warned: cl-run's own)."""
    if issubclass(category, (plugin_manager.PluginWarning, RecipeDeprecationWarning)):
        return f"cl-run: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def cmd_train(args) -> int:
    from clrun.api import load_recipe
    from clrun.training.loop import train
    from clrun.training.step import NonFiniteLossError
    from clrun.training.stop import Stopped

    recipe = load_recipe(args.recipe, args.overrides)
    if (ranked := torchrun_rank()) is not None:  # from here on, every process may fail on its own
        Reports.place = f"rank {ranked[0]} of {ranked[1]} (train.strategy={recipe.train.strategy})"
    try:
        run = train(recipe, resume=args.resume, verbose=args.verbose, allow_changes=args.allow_changes)
    except NonFiniteLossError as exc:
        report(f"cl-run: training stopped: {exc}")
        return 1
    except TrainingHalted as exc:
        report(f"cl-run: training halted: {exc}")
        return 1
    except Stopped as exc:
        report(f"cl-run: {exc}")
        return exc.exit_code
    except ComponentFailure as exc:
        return plugin_failure(exc, args, 1, "training stopped")
    from clrun import distributed

    if distributed.launch_rank() == 0:  # under torchrun, one line for the one run folder
        print(f"run folder: {run.directory}")
    return 0


def cmd_check(args) -> int:
    from clrun.api import load_recipe
    from clrun.commands.check import check

    recipe = load_recipe(args.recipe, args.overrides)
    for line in check(recipe, verbose=args.verbose):
        print(f"  {line}")
    print(f"{args.recipe}: OK")
    return 0


def cmd_eval(args) -> int:
    from clrun.evaluation import EVAL_ELSEWHERE, evaluate, written_to
    from clrun.storage import elsewhere
    from clrun.report import write_report
    from clrun.training.callbacks.reporting import results_table

    results = evaluate(args.checkpoint, args.overrides, args.sections, args.output)
    for line in results_table(results, sorted({k.removesuffix("_projector") for k in results})):
        print(line)
    folder = checkpoint_folder(args.checkpoint)
    with elsewhere(EVAL_ELSEWHERE):
        report = write_report(folder.path, args.output)
    print(f"results: {written_to(folder, args.output).evaluation}\nreport: {report}")
    return 0


def cmd_export(args) -> int:
    if args.hub_folder is None:
        if args.push or args.private or args.license:
            raise UserError("export: --push, --private and --license go with --hub-folder DIR (the folder to write and upload)")
        from clrun.export import export

        print(f"encoder: {export(args.checkpoint, args.output)}")
        return 0
    if args.output is not None:
        raise UserError("export: -o writes the encoder file, --hub-folder a model folder: give one of them")
    from clrun.commands.hub_folder import DEFAULT_LICENSE, push_folder, write_hub_folder

    folder = write_hub_folder(args.checkpoint, args.hub_folder, args.license or DEFAULT_LICENSE, args.push)
    print(f"hub folder: {folder}")
    if args.push:
        print(f"uploaded: {push_folder(folder, args.push, args.private)}")
    return 0


def cmd_embed(args) -> int:
    from clrun.commands.embed import embed
    from clrun.run_folder import RunFolder

    done = embed(args.source, args.images, args.out, features=args.features, nearest=args.nearest,
                 batch_size=args.batch_size, workers=args.workers, device=args.device, part_size=args.part_size,
                 strict=args.strict, report=args.report)
    nearest = f", {args.nearest} nearest each" if args.nearest else ""
    print(f"embeddings: {done.file} ({done.rows} images x {done.dim} {args.features} features{nearest})")
    if args.report:
        print(f"report: {RunFolder(args.report).report}")
    return 0


def cmd_sweep(args) -> int:
    from clrun.commands.sweep import sweep

    print(f"sweep table: {sweep(args.recipe, args.overrides)}")
    return 0


def cmd_report(args) -> int:
    from clrun.report import write_report
    from clrun.run_folder import RunFolder
    from clrun.storage import elsewhere

    folder = RunFolder(args.run)
    if not folder.is_run():
        raise UserError(f"report: {folder.path} is not a run folder (it has no {folder.recipe.name})")
    with elsewhere("write the report to {place} instead (-o DIR)"):
        print(f"report: {write_report(folder.path, args.output)}")
    return 0


def checkpoint_folder(run_or_checkpoint: str):
    from pathlib import Path

    from clrun.run_folder import RunFolder

    path = Path(run_or_checkpoint)
    return RunFolder(path) if path.is_dir() else RunFolder.of_checkpoint(path)


def cmd_shards(args) -> int:
    from clrun.commands.shards import INDEX, write_shards

    index = write_shards(args.source, args.output, args.shard_size, args.seed)
    classes = f", {len(index['classes'])} classes" if index["classes"] else ", unlabeled"
    print(f"cl-run: wrote {index['images']} images in {len(index['shards'])} shards{classes} to {args.output} "
          f"(see its {INDEX}); train on them with data.dataset.name=clrun/webdataset data.dataset.urls={args.output}")
    return 0


def cmd_components(args) -> int:
    registry = plugin_manager.default_registry()
    if args.kind and args.pattern and not any(ch in args.pattern for ch in "*?["):  # one component: its help
        from clrun.commands.components import describe  # the factory's module is imported for its docstring

        try:
            component = registry.get(args.kind, args.pattern)
        except UserError as exc:
            print(f"cl-run: error: {exc}", file=sys.stderr)
            return 1
        print("\n".join(describe(component)))
        return 0
    # Without a pattern, a lazy namespace (every timm model, every kornia op) is one row: listing its
    # names would import its library. A pattern that reaches into it lists its matching names.
    found = registry.list(args.kind, args.pattern, expand_lazy=args.pattern is not None)
    namespaces = registry.namespaces(args.kind) if args.pattern is None else []
    rows = [(c.kind, c.name, c.summary, c.provider) for c in found]
    rows += [(n.kind, n.pattern, n.summary, n.provider) for n in namespaces]
    for kind, name, summary, provider in sorted(rows, key=lambda row: (KINDS.index(row[0]), row[1])):
        print(f"{kind:<13} {name:<40} {summary[:70]:<70}  [{provider}]")
    if not rows:
        print("no components match", file=sys.stderr)
        return 1
    if namespaces:
        example = namespaces[0]
        print(f"(a name ending in /* is a namespace resolved on first use; list its names with a pattern, "
              f"e.g. cl-run components {example.kind} '{example.pattern}')")
    return 0


def cmd_plugins(args) -> int:
    registry = plugin_manager.default_registry()
    for p in registry.plugins:
        lazy = "".join(f", all of {namespace}" for namespace in p.namespaces)  # e.g. ", all of backbone timm/*"
        print(f"ok      {p.name:<40} {p.dist} {p.version}  ({p.components} components{lazy})")
    for b in registry.broken:
        error = b.error.replace("\n", "\n" + " " * 10)  # keep multi-line errors (pluggy's) indented
        print(f"BROKEN  {b.name:<40} {b.dist} {b.version}  {error}")
        if args.verbose and b.traceback:
            print(" " * 10 + b.traceback.rstrip().replace("\n", "\n" + " " * 10))
    for name in registry.disabled:
        print(f"off     {name:<40} (--disable-plugin)")
    if registry.broken and not args.verbose:
        print("(cl-run plugins -v shows each broken plugin's traceback)")
    if not registry.autoload:
        print("(entry-point autoloading is off: only built-ins are loaded)")
    return 0


COMMAND_FUNCTIONS = {
    "train": cmd_train, "check": cmd_check, "eval": cmd_eval, "export": cmd_export, "embed": cmd_embed, "sweep": cmd_sweep,
    "report": cmd_report, "shards": cmd_shards, "components": cmd_components, "plugins": cmd_plugins,
}
