"""A full or read-only disk is one clear sentence naming the path and the fix; what was saved is kept."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import clrun
from clrun import storage
from clrun.export import write_encoder
from clrun.run_folder import RunFolder
from clrun.storage import StorageError
from clrun.training import checkpointing
from clrun.training.checkpointing import writes

pytestmark = pytest.mark.usefixtures("no_report")  # these runs are not about the report

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


def recipe(tmp_path: Path, *extra: str):
    return clrun.load_recipe(TINY, [f"run.dir={tmp_path}", "run.name=r", "health.enabled=false", *extra])


def failing(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, "simulated")
    return fail


def test_a_full_disk_at_the_second_checkpoint_keeps_the_first(tmp_path, monkeypatch):
    real = writes.torch.save
    calls = []

    def save_twice_then_full(obj, f):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f)

    monkeypatch.setattr(writes.torch, "save", save_twice_then_full)
    with pytest.raises(StorageError) as info:
        clrun.train(recipe(tmp_path, "train.epochs=2"))
    folder = RunFolder(tmp_path / "r")
    message = str(info.value)
    assert message.startswith(f"checkpoint: cannot write {folder.checkpoint}: the disk is full (")
    assert message.endswith("MB free there); free some space or set run.dir to a larger disk; the previous checkpoint is kept")
    assert int(checkpointing.load(folder.checkpoint)["epoch"]) == 1  # the first checkpoint, intact
    assert [p.name for p in folder.path.iterdir() if p.name.endswith(".tmp")] == []


def test_torchs_own_full_disk_error_is_recognized(tmp_path, monkeypatch):
    def cpp_error(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(writes.torch, "save", cpp_error)
    answers = iter([10**12])  # room at the start; none when the checkpoint is written
    monkeypatch.setattr(storage, "free_bytes", lambda path: next(answers, 0))
    with pytest.raises(StorageError, match=r"checkpoint: cannot write .*: the disk is full; free some space"):
        clrun.train(recipe(tmp_path, "train.epochs=1"))


def test_a_read_only_run_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "mkdir", failing(errno.EROFS))
    with pytest.raises(StorageError) as info:
        clrun.train(recipe(tmp_path / "ro"))
    assert str(info.value) == (f"run folder: cannot write {tmp_path / 'ro'}: the file system is read-only; "
                               f"set run.dir to a writable folder")


def test_an_export_to_a_read_only_place_is_named(tmp_path, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", failing(errno.EACCES))
    target = tmp_path / "enc.safetensors"
    with pytest.raises(StorageError) as info:
        write_encoder(target, {}, {"backbone": {"name": "timm/test_resnet"}})
    assert str(info.value) == f"export: cannot write {target}: permission denied; set run.dir to a folder you may write to"


def test_a_run_that_could_not_checkpoint_does_not_start(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "free_bytes", lambda path: 1000)
    with pytest.raises(StorageError) as info:
        clrun.train(recipe(tmp_path))
    assert str(info.value).startswith("the run's checkpoint needs about ")
    assert str(info.value).endswith(f"MB in {tmp_path} but only 0 MB are free there; free some space or set run.dir "
                                    f"to a larger disk")
    assert not (tmp_path / "r").exists()
