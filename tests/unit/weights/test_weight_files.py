"""Every damaged or hostile weight file an ``init:`` entry names is one UserError (exit 2 from the CLI) that
names the file, the cause and the fix; nothing is unpickled."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

import clrun
from clrun.cli import main as cl_run_main
from clrun.weights.files import hub_repository, read_source

TINY = Path(__file__).parents[2] / "recipes" / "tiny.yaml"
FIX = "copy or download it again, or pass a state dict of tensors (.safetensors or torch.save)"


class Payload:
    """Unpickling this runs a command: the file must be refused before that."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def good_pickle(folder: Path) -> bytes:
    torch.save({"w": torch.ones(3)}, folder / "good.pth")
    return (folder / "good.pth").read_bytes()


def good_safetensors(folder: Path) -> bytes:
    safetensors.torch.save_file({"w": torch.ones(3)}, str(folder / "good.safetensors"))
    return (folder / "good.safetensors").read_bytes()


def header(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


OFFSETS = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4000]}}).encode()

# name -> (how to write the file into a folder, the message after "init.backbone: <path> ")
DAMAGED = {
    "empty": (lambda d: b"", "is empty (0 bytes): an interrupted copy or download; copy it again"),
    "truncated pickle": (lambda d: good_pickle(d)[:200],
                         "is a damaged or foreign torch.save file (RuntimeError: PytorchStreamReader failed reading zip "
                         f"archive: failed finding central directory); {FIX}"),
    "truncated safetensors": (lambda d: good_safetensors(d)[:-4],
                              "is a damaged or foreign safetensors file (SafetensorError: incomplete metadata, file not "
                              f"fully covered); {FIX}"),
    "huge header": (lambda d: struct.pack("<Q", 1 << 60) + b"{}",
                    f"is a damaged or foreign safetensors file (SafetensorError: header too large); {FIX}"),
    "bad JSON": (lambda d: header(b"{not json!!}"),
                 "is a damaged or foreign safetensors file (SafetensorError: invalid JSON in header: key must be a "
                 f"string at line 1 column 2); {FIX}"),
    "offsets out of range": (lambda d: header(OFFSETS) + bytes(12),
                             "is a damaged or foreign safetensors file (SafetensorError: invalid shape, data type, or "
                             f"offset for tensor); {FIX}"),
    "text": (lambda d: b"hello world\n", f"is a damaged or foreign torch.save file (KeyError: 101); {FIX}"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_file_is_named_with_its_cause_and_fix(name, tmp_path):
    write, message = DAMAGED[name]
    path = tmp_path / "weights.bin"
    path.write_bytes(write(tmp_path))
    with pytest.raises(clrun.UserError) as caught:
        read_source(str(path), "init.backbone")
    assert str(caught.value) == f"init.backbone: {path} {message}"


def test_a_pickle_with_a_payload_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {"w": torch.ones(1)}, "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(clrun.UserError) as caught:
        read_source(str(tmp_path / "evil.pth"), "init.backbone")
    assert str(caught.value).startswith(
        f"init.backbone: {tmp_path / 'evil.pth'} asks for the Python object posix.system while it is read, and "
        f"unpickling runs such objects' code, so cl-run does not; pass a file that holds only tensors")
    assert not (tmp_path / "PWNED").exists()


def test_an_official_checkpoints_namespace_is_read_as_data(tmp_path):
    import argparse

    torch.save({"teacher": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1, arch="vit_small")},
               tmp_path / "ckpt.pth")
    file = read_source(str(tmp_path / "ckpt.pth"), "init.backbone")
    assert file.content["args"].arch == "vit_small" and file.content["teacher"]["w"].tolist() == [1.0, 1.0]
    assert len(file.sha256) == 64


def test_a_model_folder_with_a_broken_config_is_named(tmp_path):
    safetensors.torch.save_file({"w": torch.ones(3)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{\"architecture\": ")
    with pytest.raises(clrun.UserError) as caught:
        read_source(str(tmp_path), "init.backbone")
    assert str(caught.value) == (f"init.backbone: {tmp_path / 'config.json'} is not valid JSON (Expecting value: line 1 "
                                 f"column 18 (char 17)); restore the folder's config.json (a timm model folder's, from "
                                 f"the same download as its model.safetensors)")


def test_missing_file_and_empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(clrun.UserError, match=r"^init\.backbone: no file at nothere\.pth \(relative paths start in "):
        read_source("nothere.pth", "init.backbone")
    (tmp_path / "empty").mkdir()
    with pytest.raises(clrun.UserError, match=r"^init\.backbone: empty is neither a model folder"):
        read_source("empty", "init.backbone")


def test_hub_names_and_paths_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_repository("timm/vit_small_patch14_dinov2.lvd142m") == "timm/vit_small_patch14_dinov2.lvd142m"
    assert hub_repository("hf-hub:org/model") == "org/model"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a").mkdir()
    assert hub_repository("runs/a") is None  # a path that exists is a path
    assert hub_repository("weights.pth") is None


# Through the CLI, each family once: exit code 2, its one line, no traceback (a build each: the slow suite, but
# for one case).
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "huge header" else [pytest.mark.slow])
                                  for n in [*DAMAGED, "payload"]])
def test_the_cli_exits_2_with_one_line_and_no_traceback(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "weights.bin"
    if name == "payload":
        torch.save({"x": Payload()}, path)
        message = (f"{path} asks for the Python object posix.system while it is read, and unpickling runs such "
                   f"objects' code, so cl-run does not; pass a file that holds only tensors (a state dict or "
                   f"safetensors: in a trusted Python, torch.save(torch.load(f, weights_only=False)['model'], "
                   f"'weights.pt'))")
    else:
        write, message = DAMAGED[name]
        path.write_bytes(write(tmp_path))
        message = f"{path} {message}"
    code = cl_run_main(["check", str(TINY), f"init.backbone.source={path}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"cl-run: error: init.backbone: {message}"]
    assert not (tmp_path / "PWNED").exists()
