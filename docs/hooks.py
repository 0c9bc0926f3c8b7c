"""MkDocs hooks for cl-run's documentation (mkdocs.yml: ``hooks``).

1. Lay out the sources as the package ``clrun`` for mkdocstrings, without installing cl-run. The
   repository keeps ``clrun`` in ``core/`` and ``clrun.plugins`` in ``plugins/`` (pyproject's
   package-dir); griffe, mkdocstrings' reader, finds a package by its folder name and reads source
   files, so torch and the other dependencies are never imported. Before each build this writes
   ``build/docs-src/clrun/``, a symbolic link per entry of ``core/`` plus ``plugins``, which mkdocs.yml
   gives griffe as its search path. Links, not copies: ``mkdocs serve`` shows an edited docstring at once.

2. Fail the strict build on an API reference entry without a docstring. mkdocstrings already fails on a
   ``::: name`` that names nothing, but it renders an object without a docstring as a bare signature
   and skips a name in ``members: [...]`` that does not exist; both are warnings here.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import griffe
import yaml
from mkdocs.plugins import event_priority

TREE = Path("build") / "docs-src"
log = logging.getLogger("mkdocs.hooks.clrun")  # under "mkdocs": a warning fails `mkdocs build --strict`
DIRECTIVE = re.compile(r"^::: (\S+)\s*$")
_loader: dict[str, griffe.GriffeLoader] = {}


@event_priority(100)  # before mkdocstrings reads its search paths (it drops paths that do not exist)
def on_config(config):
    repo = Path(config.config_file_path).resolve().parent
    package = repo / TREE / "clrun"
    if package.is_symlink() or package.is_file():
        package.unlink()
    elif package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for entry in sorted((repo / "core").iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "plugins").symlink_to(repo / "plugins")
    loader = griffe.GriffeLoader(search_paths=[str(repo / TREE)])
    loader.load("clrun")
    loader.resolve_aliases(external=False)
    _loader["clrun"] = loader
    return config


def on_page_markdown(markdown, page, config, files):
    lines = markdown.splitlines()
    for number, line in enumerate(lines):
        match = DIRECTIVE.match(line)
        if not match:
            continue
        options = []
        for following in lines[number + 1:]:
            if not following.startswith("    "):
                break
            options.append(following)
        members = (yaml.safe_load("\n".join(o[4:] for o in options)) or {}).get("options", {}).get("members")
        _check(page.file.src_uri, match.group(1), members)
    return markdown


def _check(where: str, path: str, members) -> None:
    package = _loader["clrun"].modules_collection["clrun"]
    try:
        obj = package[path.removeprefix("clrun.")] if path != "clrun" else package
        obj = obj.final_target if obj.is_alias else obj
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return  # mkdocstrings reports a name it cannot find
    if not obj.docstring:
        log.warning(f"{where}: ::: {path} has no docstring to show; write one")
    for name in members if isinstance(members, list) else []:
        try:
            member = obj.members[name]
            member = member.final_target if member.is_alias else member
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            log.warning(f"{where}: ::: {path} lists member {name!r}, which {path} does not have")
            continue
        if not member.docstring and not member.is_attribute:
            log.warning(f"{where}: ::: {path} lists member {name!r}, which has no docstring to show; write one")
