"""One fault of tests/integration/test_faults.py's fault matrix: run cl-run commands against a file system that really
faults, inside a mount namespace of its own (``unshare --mount``), so nothing is patched.

    unshare --mount --propagation private [setpriv ...] python tests/helpers/fault_worker.py SPEC.json

SPEC names the fault (``read-only``, ``full`` or ``forbidden``), the arena folder to mount a tmpfs on, a
folder whose files are copied into it first (a trained run folder), and the command lines to run, each
with ``{arena}`` in place of the arena's path. The worker then faults the arena: it remounts it
read-only, fills it to the last byte, or hands it to another user (the test starts this worker without
the capabilities that let root ignore permissions, which is what an unprivileged user lacks). It runs
each command through ``clrun.cli.main`` in this process (one torch import for all of them), from a
working directory in the arena, and writes for each: the exit code, what it printed on stderr (a
traceback that escaped ``main`` included), and the arena's files that it added, removed or changed.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

FILLER = ".filler"  # the file that fills the full disk; not part of what the commands may change
NOBODY = 65534


def mount_arena(arena: Path, inputs: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=755", "tmpfs", str(arena)], check=True)
    shutil.copytree(inputs, arena, dirs_exist_ok=True)


def fill(path: Path) -> None:
    """Write ``path`` until the disk is full, down to the last page."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


def hand_over(arena: Path) -> None:
    """The arena belongs to another user and is read-only to everybody else (chmod first: changing the
    mode of another user's file needs a capability this worker does not have)."""
    for folder, dirs, files in os.walk(arena):
        os.chmod(folder, 0o555)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
    for folder, dirs, files in os.walk(arena):
        os.chown(folder, NOBODY, NOBODY)
        for name in files:
            os.chown(os.path.join(folder, name), NOBODY, NOBODY)


FAULTS = {
    "read-only": lambda arena: subprocess.run(["mount", "-o", "remount,ro", str(arena)], check=True),
    "full": lambda arena: fill(arena / FILLER),
    "forbidden": hand_over,
}


def snapshot(arena: Path) -> dict[str, str]:
    """Every file and folder in the arena: a digest of each file's bytes, "dir" for a folder."""
    seen = {}
    for folder, dirs, files in os.walk(arena):
        for name in dirs:
            seen[os.path.relpath(os.path.join(folder, name), arena)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            if name != FILLER:
                seen[os.path.relpath(path, arena)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return seen


def run_command(argv: list[str]) -> tuple[object, str]:
    from clrun.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code: object = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # what a user would see as a traceback
            traceback.print_exc()
            code = "raised"
    return code, err.getvalue()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    arena = Path(spec["arena"])
    mount_arena(arena, Path(spec["inputs"]))
    FAULTS[spec["fault"]](arena)
    os.chdir(arena)  # a command that writes into its working directory meets the fault too
    results = {}
    for name, argv in spec["commands"].items():
        before = snapshot(arena)
        code, err = run_command([a.replace("{arena}", str(arena)) for a in argv])
        after = snapshot(arena)
        changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
        results[name] = {"code": code, "stderr": err, "changed": changed}
    Path(spec["results"]).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
