"""The check's output: JSON lines written as they are measured, and the time limits that keep each section
inside its share of the machine's time.

Every measurement is one JSON object on its own line of ``<out>/gpu_check.jsonl``, flushed at once: when the
machine's time runs out mid-section (``timeout`` kills the process), every line written so far is there. An
item that fails or runs past its limit becomes ``{"section": ..., "item": ..., "ok": false, "error": ...}``
and the section goes on with the next item; an item the section's budget no longer reaches is written as
skipped, so a reader sees what was never measured rather than a missing line.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpu_check.bootstrap import REPO

# An item gets at least this long, or is skipped: starting a training run in less time only measures its start.
MIN_ITEM_S = 3.0


class ItemTimeLimit(Exception):
    """Raised inside an item (by SIGALRM) when it runs past its limit."""


def clean(value: Any) -> Any:
    """``value`` as strict JSON: non-finite floats become strings (``NaN`` is not JSON; a reader such as jq
    refuses the whole line), tuples lists, anything else unknown its ``str``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


class Log:
    """Writes records to ``path`` (one JSON object a line, flushed each time) and echoes a short line to
    stderr, so a person watching the console sees progress."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = path.open("w", encoding="utf-8")  # one file, one run: a rerun starts it anew
        self.failed: list[str] = []  # "section/item" of every record that is not ok

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(clean(record), allow_nan=False) + "\n")
        self.file.flush()
        if not record.get("ok"):
            self.failed.append(f"{record.get('section')}/{record.get('item')}")
        status = "ok" if record.get("ok") else ("skipped" if record.get("skipped") else "FAILED")
        detail = f": {record['error']}" if not record.get("ok") and "error" in record else ""
        print(f"gpu_check: {record.get('section')}/{record.get('item')} {status}{detail}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.file.close()


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``ItemTimeLimit`` in the main thread after ``seconds`` (the item stops at its next Python
    bytecode: a kernel or a compile worker already running finishes first)."""

    def expire(signum: int, frame: Any) -> None:
        raise ItemTimeLimit(f"ran past its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def short(filename: str) -> str:
    """A file as a reader finds it: relative to the repository, or to its site-packages (or to the payload's
    unpacked wheels, ``gpu-check-site-XXXX/``)."""
    if filename.startswith(str(REPO)):
        return str(Path(filename).relative_to(REPO))
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    if "gpu-check-site-" in filename:
        return filename.split("gpu-check-site-", 1)[1].split("/", 1)[-1]
    return filename


def where(exc: BaseException) -> list[str]:
    """The innermost frames of ``exc``'s traceback, ``file:line function``: enough to find the failing line."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    return [f"{short(f.filename)}:{f.lineno} {f.name}" for f in frames]


class Section:
    """One section's items, each under a time limit, all within the section's budget (seconds from now).

    ``run(item, measure, limit)`` calls ``measure()``, which returns the item's fields (``"ok": False``
    among them when a check inside failed), and writes the record."""

    def __init__(self, log: Log, name: str, budget_s: float, release: Callable[[], None]) -> None:
        self.log, self.name, self.budget_s = log, name, budget_s
        self.ends = time.monotonic() + budget_s
        self.release = release  # frees what an item left behind (device memory) before the next one

    def remaining(self) -> float:
        return self.ends - time.monotonic()

    def run(self, item: str, measure: Callable[[], dict[str, Any]], limit_s: float | None = None) -> dict[str, Any]:
        remaining = self.remaining()
        if remaining < MIN_ITEM_S:
            record = {"section": self.name, "item": item, "ok": False, "skipped": True,
                      "error": f"not run: the section's {self.budget_s:.0f} s budget was spent"}
            self.log.write(record)
            return record
        limit = remaining if limit_s is None else min(limit_s, remaining)
        started, signum = time.perf_counter(), None
        try:
            with time_limit(limit):
                fields = measure()
            record = {"section": self.name, "item": item, "ok": True, **fields}
        except Exception as exc:  # noqa: BLE001 (every failure is a result here; the next item still runs)
            record = {"section": self.name, "item": item, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000],
                      "where": where(exc)}
            signum = getattr(exc, "signum", None)  # cl-run's Stopped: a run that ended on SIGTERM or SIGINT
        record["seconds"] = round(time.perf_counter() - started, 3)
        self.log.write(record)
        if isinstance(signum, int):
            # cl-run turned the signal (`timeout` running out, Ctrl-C) into a clean stop of its run: the check
            # stops too, as the signal meant, with every line so far written.
            raise SystemExit(128 + signum)
        self.release()
        return record
