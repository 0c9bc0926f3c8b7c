"""Stress the end of distributed runs: 2-process sharded (FSDP2) save/resume cycles, many times, beside
CPU-bound processes, expecting every process to exit 0 every time. Not a benchmark and not in CI (the
distributed tests keep one cycle): a race at exit shows in a few launches in a hundred, and only under load.

    python bench/stress_teardown.py                              # 30 cycles beside 1 CPU hog, ~30 min on 2 cores
    python bench/stress_teardown.py --repeats 200 --hogs 2       # heavier
    python bench/stress_teardown.py --only load --repeats 300    # the 1 -> 2 resume alone, the fastest loop
    python bench/stress_teardown.py --cpus 0                     # everything pinned to one core (taskset)

One cycle is three torchrun launches of 2 processes (gloo, the tiny BYOL recipe of the distributed tests):

    save    ``cl-run`` trains a sharded run for one epoch and writes its DCP checkpoint
    resume  ``cl-run --resume`` continues that run on 2 processes for one more epoch (DCP load, train, save)
    load    ``tests/helpers/sharded_worker.py`` resumes a run trained on one process on 2 (1 -> 2), as
            ``test_fsdp_trains_as_ddp_does_and_its_checkpoints_load_on_another_number_of_processes`` does

A launch fails when torchrun exits non-zero, when a process is killed by a signal (SIGABRT from
``terminate called without an active exception``, SIGSEGV) or when it runs past ``--timeout`` (a hang at
exit). Each failure's output is kept in ``--logs``; the script ends with one line of counts and exits 1
if any launch failed.

What it found (2-core machine, other test suites running beside): with the processes ending through the
interpreter's finalization, 2 of 48 ``load`` launches aborted beside 1 hog, and 1 of 25 pinned to one core
(rank 1: SIGABRT, "terminate called without an active exception", in a gloo worker thread freeing a
collective's tensors while the interpreter was finalizing); ``clrun.distributed.exit_process`` explains the
race and is the fix. With it: 0 of 100 ``load`` launches beside 1 hog, 0 of 25 pinned to one core, 0 of 120
launches (40 whole cycles) beside 2 hogs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "helpers" / "sharded_worker.py"
# The tiny BYOL recipe of tests/distributed/test_distributed.py: a predictor and an EMA target, sharded.
RECIPE = [str(REPO / "tests" / "recipes" / "tiny.yaml"), "health.enabled=false", "target={momentum: 0.9}",
          "predictor={name: clrun/mlp, hidden_dim: 32, out_dim: 32}", "loss={name: clrun/byol}", "train.strategy=fsdp"]
STEPS = ("save", "resume", "load")
ALARMING = re.compile(r"terminate called|Signal \d+|SIGABRT|SIGSEGV|core dumped|Traceback")


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="cycles (default 30)")
    p.add_argument("--hogs", type=int, default=1, help="CPU-bound processes running beside (default 1)")
    p.add_argument("--cpus", help="pin the launches and the hogs to these CPUs (taskset -c), e.g. 0")
    p.add_argument("--only", choices=STEPS, action="append", help="run only these launches of a cycle (repeatable)")
    p.add_argument("--timeout", type=float, default=300, help="seconds before a launch counts as hung (default 300)")
    p.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "clrun-stress-teardown",
                   help="where failed launches' output is kept")
    p.add_argument("--keep-going", action="store_true", help="go on after a failure (default: stop at the first)")
    p.add_argument("--core-dumps", action="store_true",
                   help="let the launched processes dump core (in --logs, with the kernel's default core_pattern; for gdb)")
    return p.parse_args()


def hog(parent: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # terminate() ends it without a word
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the script's to handle
    while os.getppid() == parent:  # ends with the script, however the script ends
        for _ in range(1_000_000):
            pass


def pinned(command: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def launch(command: list[str], args: argparse.Namespace, cwd: Path) -> tuple[bool, str]:
    """Run ``command`` in ``cwd`` (where a core dump lands); whether it ended cleanly, and its output."""
    # faulthandler: a process that aborts prints every Python thread's stack (where the main thread was).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cores = (lambda: resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)) if args.core_dumps else None
    # A session of its own: a hung launch is ended with all its processes.
    process = subprocess.Popen(pinned(command, args.cpus), cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=cores)
    try:
        stdout, stderr = process.communicate(timeout=args.timeout)
    except BaseException as exc:  # a hang, or the script interrupted: torchrun stops its workers on SIGTERM
        process.terminate()
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        return False, f"TIMEOUT after {args.timeout} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    output = f"exit code {process.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    return process.returncode == 0 and not ALARMING.search(stderr), output


def main() -> int:
    args = options()
    steps = args.only or list(STEPS)
    args.logs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="clrun-stress-"))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` cleans up as Ctrl-C does
    hogs = [multiprocessing.Process(target=hog, args=(os.getpid(),), daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
        if args.cpus:
            subprocess.run(["taskset", "-pc", args.cpus, str(h.pid)], check=True, capture_output=True)
    counts = {step: [0, 0] for step in steps}  # launches, failures
    started = time.monotonic()
    try:
        one = scratch / "one"
        if "load" in steps:  # the 1 -> 2 resume's run, trained once on one process
            ok, output = launch([sys.executable, "-m", "clrun", *RECIPE, "train.epochs=2", f"run.dir={one}"], args, args.logs)
            if not ok:
                raise SystemExit(f"the one-process run failed:\n{output[-3000:]}")
        for i in range(args.repeats):
            run_dir = scratch / f"cycle{i}"
            commands = {
                "save": torchrun("-m", "clrun", *RECIPE, "train.epochs=1", f"run.dir={run_dir}"),
                "resume": torchrun("-m", "clrun", *RECIPE, "train.epochs=2", f"run.dir={run_dir}",
                                   "--resume", str(run_dir / "tiny")),
                "load": torchrun(str(WORKER), str(one / "tiny"), str(scratch / "loaded.pt"), *RECIPE, "train.epochs=2",
                                 f"run.dir={one}"),
            }
            if "resume" in steps and "save" not in steps:  # a checkpoint to resume from, outside the counts
                ok, output = launch(commands["save"], args, args.logs)
                if not ok:
                    raise SystemExit(f"cycle {i}: the run to resume failed:\n{output[-3000:]}")
            failed = []
            for step in steps:
                ok, output = launch(commands[step], args, args.logs)
                counts[step][0] += 1
                if not ok:
                    counts[step][1] += 1
                    failed.append(step)
                    log = args.logs / f"cycle{i}-{step}.log"
                    log.write_text(output)
                    print(f"cycle {i + 1}: {step} FAILED (output in {log})", flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"cycle {i + 1}/{args.repeats}: {'FAILED ' + ', '.join(failed) if failed else 'ok'} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            if failed and not args.keep_going:
                break
    except KeyboardInterrupt:
        print("stress_teardown: interrupted; the counts so far:", flush=True)
    finally:
        for h in hogs:
            h.terminate()
        shutil.rmtree(scratch, ignore_errors=True)
    return summary(counts, started, args)


def summary(counts: dict[str, list[int]], started: float, args: argparse.Namespace) -> int:
    failed = sum(f for _, f in counts.values())
    where = f", pinned to CPUs {args.cpus}" if args.cpus else ""
    print(f"stress_teardown: {sum(n for n, _ in counts.values())} launches, {failed} failed ("
          + ", ".join(f"{step} {f}/{n}" for step, (n, f) in counts.items())
          + f") beside {args.hogs} CPU hog(s){where}, in {time.monotonic() - started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
