"""How long the ``cl-run`` command line takes to answer: four commands, each in a fresh process.

    python bench/cli_timing.py --repeats 5 --results bench/RESULTS.md
    python bench/cli_timing.py --baseline /path/to/other/venv/bin/cl-run     # before/after, interleaved

Each command runs ``--repeats`` times as a new process (the console script, as a user runs it), after one
untimed run that warms the page cache: "cold-ish", every Python import paid, no file read from disk.
Wall time is the measure the targets are set in (issue 11, on the 2-core machine); the CPU time of the
process (user + system) is shown beside it because it varies less on a shared machine. With
``--baseline``, another ``cl-run`` (e.g. an older checkout's environment) runs the same commands,
interleaved with this one (rounds alternate which goes first), so both see the same load.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO  # bench/common.py: the script's folder is on sys.path
from reporting import machine, table, write_section

# (command, target in seconds); the quickstart recipe is read relative to the repository root.
COMMANDS: list[tuple[tuple[str, ...], float]] = [
    (("--help",), 0.5),
    (("components",), 1.5),
    (("plugins",), 1.5),
    (("check", "recipes/quickstart.yaml"), 6.0),
]
SECTION_KEY = "cli timing (cpu)"


def timed_run(executable: Path, args: tuple[str, ...]) -> tuple[float, float]:
    """One run of ``executable ARGS`` in the repository root: (wall seconds, CPU seconds of the process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([str(executable), *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{executable} {' '.join(args)} exited with {result.returncode}:\n{result.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(sides: dict[str, Path], repeats: int) -> dict[str, dict[tuple[str, ...], list[tuple[float, float]]]]:
    """Every side's (wall, CPU) per command and repetition, the sides interleaved."""
    runs: dict[str, dict[tuple[str, ...], list[tuple[float, float]]]] = {s: {c: [] for c, _ in COMMANDS} for s in sides}
    for name, executable in sides.items():  # warm the page cache: the first run reads every file from disk
        for command, _ in COMMANDS:
            timed_run(executable, command)
    for round_ in range(repeats):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for command, _ in COMMANDS:
            for name in order:
                runs[name][command].append(timed_run(sides[name], command))
                print(f"  round {round_ + 1}/{repeats}  {name:<10} cl-run {' '.join(command):<36} "
                      f"{runs[name][command][-1][0]:6.2f} s", file=sys.stderr, flush=True)
    return runs


def results_table(runs: dict[str, dict[tuple[str, ...], list[tuple[float, float]]]]) -> tuple[list[str], bool]:
    """The Markdown table (one row per command, the sides side by side) and whether every target is met."""
    sides = list(runs)
    header = ["command", "target"]
    for side in sides:
        header += [f"{side}: wall s (median)", "range", "CPU s"]
    header.append("target met" if len(sides) == 1 else f"target met ({sides[0]})")
    rows, all_met = [], True
    for command, target in COMMANDS:
        row: list = [f"`cl-run {' '.join(command)}`", f"<= {target:g} s"]
        for side in sides:
            walls = [wall for wall, _ in runs[side][command]]
            cpus = [cpu for _, cpu in runs[side][command]]
            row += [f"{statistics.median(walls):.2f}", f"{min(walls):.2f}-{max(walls):.2f}", f"{statistics.median(cpus):.2f}"]
        met = statistics.median(wall for wall, _ in runs[sides[0]][command]) <= target
        all_met &= met
        row.append("yes" if met else "NO")
        rows.append(row)
    return table(header, rows), all_met


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each command (the median is reported)")
    p.add_argument("--cl-run", type=Path, default=Path(sys.executable).with_name("cl-run"),
                   help="the console script to time (default: the one installed next to this Python)")
    p.add_argument("--baseline", type=Path, help="another cl-run console script to time alongside, e.g. main's")
    p.add_argument("--name", default="cl-run", help="the timed side's name in the table")
    p.add_argument("--baseline-name", default="baseline", help="the baseline's name in the table")
    p.add_argument("--results", type=Path, help="also write the table into this file (bench/RESULTS.md)")
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    sides = {args.name: args.cl_run} | ({args.baseline_name: args.baseline} if args.baseline else {})
    for executable in sides.values():
        if not executable.is_file():
            raise SystemExit(f"no cl-run console script at {executable}")

    load_before = os.getloadavg()[0]
    runs = measure(sides, args.repeats)
    load_after = os.getloadavg()[0]
    lines, all_met = results_table(runs)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    block = [
        "### Command-line response times",
        "",
        f"Measured by `{command}` on {machine()}; 1-minute load average {load_before:.1f} before, "
        f"{load_after:.1f} after (on 2 cores, above ~1 means other processes competed for the CPU).",
        "",
        f"Each command as a new process (the console script), median of {args.repeats} runs after one untimed "
        "run; wall time is what the targets are set in, the process's CPU time (user + system) varies less "
        "with load.",
        "",
        *lines,
        "",
        f"**Command-line targets: {'all met' if all_met else 'NOT all met'}** ({args.name}, wall-clock medians).",
    ]
    print("\n".join(block), flush=True)
    if args.results:
        write_section(args.results, SECTION_KEY, "\n".join(block))


if __name__ == "__main__":
    main()
