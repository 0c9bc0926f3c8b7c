"""One writer per run folder: a lock file that names its holder (process id and host).

Two ``--resume`` of one folder at once would both train and interleave their logs. The lock is a file
created exclusively (``O_EXCL``, atomic on local and NFSv3+ file systems) holding the holder's pid,
host and start time. A lock whose process is gone (same host, pid not running) is stale: it is taken
over, with a message. A lock held by a live process, or by another host (whose processes cannot be
checked from here), is an error that says who holds it and how to clear it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from clrun.errors import UserError
from clrun.storage import create_exclusive, discard, remove


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # gone meanwhile, or torn by a crash during its write
    return holder if isinstance(holder, dict) else None


class RunLock:
    """``with RunLock(folder.lock): ...`` holds the folder for this process; released on exit."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):  # a second try after taking over a stale lock
            try:
                create_exclusive(self.path, json.dumps(me), "run lock")
            except FileExistsError:
                self._take_over_if_stale()
                continue
            self.held = True
            return
        raise UserError(f"{self.path.parent}: could not take its lock {self.path}; try again")

    def _take_over_if_stale(self) -> None:
        holder = _holder(self.path) or {}
        pid, host = holder.get("pid"), holder.get("host")
        here = socket.gethostname()
        if isinstance(pid, int) and host == here and not _alive(pid):
            print(f"cl-run: {self.path.parent}: taking over the lock of process {pid} on {host}, which is no "
                  f"longer running", file=sys.stderr, flush=True)
            remove(self.path, "run lock")
            return
        if not holder:
            raise UserError(f"{self.path.parent} is locked by {self.path}, which names no holder; if no cl-run "
                            f"process uses this run folder, delete {self.path}")
        raise UserError(
            f"{self.path.parent} is in use by process {pid} on {host} (since {holder.get('since', '?')}): one run "
            f"folder has one writer. Wait for it to finish; if that process is gone (e.g. on another machine), "
            f"delete {self.path}"
        )

    def release(self) -> None:
        if self.held:
            discard(self.path)  # never raised over the error that ends the run: a stale lock is taken over
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
