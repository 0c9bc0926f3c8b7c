"""How a ``cl-run`` process that torchrun started reports a failure and ends (``clrun.cli``'s reports,
``clrun.distributed``'s ``first_to_report``, ``peer_gone`` and ``exit_process``), without a process group:
torchrun's environment is set by hand. tests/distributed/test_distributed.py checks the same under torchrun, and
bench/stress_teardown.py the end of real 2-process runs, many times, under load."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed as dist

from clrun import cli, distributed
from clrun.errors import ComponentFailure

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "recipes" / "tiny.yaml"
GLOO_PEER_GONE = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                  "[127.0.0.1]:19879. This is typically caused by a remote worker crashing.")


def under_torchrun(monkeypatch, rank: int, world: int = 2) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))


def test_outside_torchrun_a_report_is_printed_as_it_is(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(cli.Reports, "place", "rank 1 of 2 (train.strategy=ddp)")  # ignored: no torchrun
    cli.report("cl-run: error: x")
    assert capsys.readouterr().err == "cl-run: error: x\n"


def test_before_the_recipe_is_read_rank_0_alone_reports(capsys, monkeypatch):
    monkeypatch.setattr(cli.Reports, "place", None)
    for rank, printed in ((0, "cl-run: error: bad recipe\n"), (1, "")):
        under_torchrun(monkeypatch, rank)
        cli.report("cl-run: error: bad recipe")
        assert capsys.readouterr().err == printed


def test_a_report_names_the_process_and_the_strategy_on_each_line_that_starts_one(capsys, monkeypatch):
    under_torchrun(monkeypatch, 1)
    monkeypatch.setattr(cli.Reports, "place", "rank 1 of 2 (train.strategy=fsdp)")
    monkeypatch.setattr(distributed, "first_to_report", lambda message: True)
    cli.report("cl-run: error: clrun/image_folder: cannot read image a.png")
    cli.report("r.yaml:3:5: error: data.batch_size: 63 does not split\n  a detail\ncl-run: 1 problem(s); nothing was run")
    assert capsys.readouterr().err.splitlines() == [
        "cl-run: rank 1 of 2 (train.strategy=fsdp): error: clrun/image_folder: cannot read image a.png",
        "cl-run: rank 1 of 2 (train.strategy=fsdp): r.yaml:3:5: error: data.batch_size: 63 does not split",
        "  a detail",
        "cl-run: rank 1 of 2 (train.strategy=fsdp): 1 problem(s); nothing was run",
    ]


def test_a_report_another_process_made_first_is_not_repeated(capsys, monkeypatch):
    under_torchrun(monkeypatch, 0)
    monkeypatch.setattr(cli.Reports, "place", "rank 0 of 2 (train.strategy=ddp)")
    monkeypatch.setattr(distributed, "first_to_report", lambda message: False)
    cli.report("cl-run: training stopped: the loss is nan")
    assert capsys.readouterr().err == ""


def test_the_group_s_store_lets_the_first_process_report_an_error_and_no_other(monkeypatch):
    monkeypatch.setattr(distributed, "_store", dist.PrefixStore("clrun/attempt_0", dist.HashStore()))
    assert distributed.first_to_report("cl-run: error: the data set is missing")  # rank 1, first
    assert not distributed.first_to_report("cl-run: error: the data set is missing")  # rank 0, the same error
    assert distributed.first_to_report("cl-run: error: another failure")
    monkeypatch.setattr(distributed, "_store", None)  # no group: every process reports
    assert distributed.first_to_report("cl-run: error: the data set is missing")


def test_a_collective_failing_because_another_process_is_gone_is_recognized():
    assert distributed.peer_gone(RuntimeError(GLOO_PEER_GONE))
    assert distributed.peer_gone(dist.DistBackendError("NCCL error: remote process exited or there was a network error"))
    try:  # raised from it
        try:
            raise RuntimeError(GLOO_PEER_GONE)
        except RuntimeError as exc:
            raise ValueError("the checkpoint could not be written") from exc
    except ValueError as exc:
        assert distributed.peer_gone(exc)
    # This process's own failures, even when they quote a connection reset by a server.
    assert not distributed.peer_gone(ComponentFailure("clrun/hf_dataset failed: Connection reset by peer"))
    assert not distributed.peer_gone(ConnectionResetError(104, "Connection reset by peer"))
    assert not distributed.peer_gone(RuntimeError("Timed out waiting 1800000ms for send operation to complete"))


@pytest.mark.slow  # a fresh Python process: seconds each
def test_exit_process_does_what_the_interpreter_s_end_would_and_exits_with_the_code(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import atexit, sys, threading, time
        from pathlib import Path
        from clrun import distributed

        def slow():
            time.sleep(0.5)
            Path({str(tmp_path / "thread")!r}).write_text("joined")

        threading.Thread(target=slow).start()  # not a daemon: Python's shutdown would wait for it
        atexit.register(lambda: Path({str(tmp_path / "atexit")!r}).write_text("ran"))
        print("buffered", end="")  # stdout is a pipe: block-buffered, lost by a bare os._exit
        print("to stderr", file=sys.stderr, end="")
        distributed.exit_process(3)
        print("never")
    """), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (3, "buffered", "to stderr")
    assert (tmp_path / "thread").read_text() == "joined" and (tmp_path / "atexit").read_text() == "ran"


def python_m_clrun(*args: str, rank: int, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank)}
    return subprocess.run([sys.executable, "-m", "clrun", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # a fresh Python process: seconds each
@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_the_command_ends_through_exit_process_with_its_code_and_output(rank, tmp_path):
    listed = python_m_clrun("components", "loss", "clrun/ntx*", rank=rank, tmp_path=tmp_path)
    assert listed.returncode == 0 and "clrun/ntxent" in listed.stdout  # flushed before os._exit
    missing = python_m_clrun(str(tmp_path / "missing.yaml"), rank=rank, tmp_path=tmp_path)
    assert missing.returncode == 2
    # A recipe every process reads alike: rank 0 reports it, the others exit with the same code in silence.
    assert ("missing.yaml" in missing.stderr) == (rank == 0) and "Traceback" not in missing.stderr


@pytest.mark.slow  # a fresh Python process: seconds each
def test_under_torchrun_a_bug_still_shows_its_traceback(tmp_path, monkeypatch):
    script = tmp_path / "buggy.py"
    script.write_text(textwrap.dedent("""
        from clrun import cli

        def main():
            raise ZeroDivisionError("a bug")

        cli.main = main
        cli.command()
    """), encoding="utf-8")
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "ZeroDivisionError: a bug" in done.stderr
