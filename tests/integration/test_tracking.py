"""clrun/wandb and clrun/mlflow, for real: W&B offline (its run files read back), MLflow on a local file
store and on a local tracking server started here on a loopback port; a resumed run continues the same
tracker run with each step once; a server that is down or never answers costs training nothing.

Every tracker's records are compared with the run folder's metrics.jsonl, which they must equal.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import clrun

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
SECRETS = {"WANDB_API_KEY": "wandb-secret-7f3a9c", "HF_TOKEN": "hf_secret_8d2b4e",
           "MLFLOW_TRACKING_TOKEN": "mlflow-token-5e1c0a", "MLFLOW_TRACKING_PASSWORD": "mlflow-password-c4d9"}


def recipe(tmp_path: Path, name: str, callback: str, *overrides: str):
    return clrun.load_recipe(TINY, ["train.epochs=2", f"run.dir={tmp_path / 'runs'}", f"run.name={name}",
                                    f"callbacks=[{callback}]", *overrides])


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What a tracker must hold: ``<kind>/<metric>`` -> [(step, value)] of every finite number in metrics.jsonl."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records(run_dir):
        for key, value in record.items():
            if key not in ("kind", "step") and isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(f"{record['kind']}/{key}", []).append((record["step"], float(value)))
    return series


def state(run_dir: Path, tracker: str) -> dict:
    return json.loads((run_dir / tracker / "cl-run.json").read_text(encoding="utf-8"))


def assert_no_secrets(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for name, secret in SECRETS.items():
                    assert secret.encode() not in data, f"{name} leaked into {path}"


@pytest.fixture
def secrets(monkeypatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


# -- Weights & Biases, offline -----------------------------------------------------------------------

def wandb_records(path: Path) -> Iterator:
    """The records of a W&B run file (``run-ID.wandb``): a 7-byte header, then LevelDB-log blocks of 32 KiB
    whose chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) hold wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buffer = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # the rest of a block is padding
            pos += left
            continue
        buffer += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buffer)
            buffer = b""
            yield record


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Iterator:
    """W&B offline, its own folders in the test's: nothing leaves this machine."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    yield wandb
    wandb.teardown()  # its service process


def test_wandb_offline_holds_the_records_and_a_resume_continues_the_run(
        tmp_path, offline_wandb, secrets, monkeypatch, capfd, crash_after_first_checkpoint, reports_skipped):
    wandb = offline_wandb
    init = wandb.init

    def no_network(mode=None, **kwargs):  # "online" fails as it does without a network or an API key
        if mode == "online":
            raise wandb.errors.CommError("no network here")
        return init(mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", no_network)
    with reports_skipped():  # the first segment crashes after epoch 1's checkpoint
        folder = crash_after_first_checkpoint(recipe(tmp_path, "w", "{name: clrun/wandb, mode: online}"))
    fallback = "warning: clrun/wandb: W&B could not start the run (CommError: no network here); logging offline"
    assert fallback in capfd.readouterr().err
    first = state(folder, "wandb")
    assert (first["step"], first["epoch"]) == (4, 1)

    # With a loader worker: its forks happen while the sender's thread logs (safe; wandb.init is not: the
    # callback starts W&B's run on the training thread, before the loader forks, see WandbLogger).
    run = clrun.train(recipe(tmp_path, "w", "{name: clrun/wandb}", "data.num_workers=1"), resume=folder)
    assert state(folder, "wandb")["run_id"] == first["run_id"]
    segments = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(segments) == 2  # one folder per segment, W&B's run file named after the same run id
    files = [segment / f"run-{first['run_id']}.wandb" for segment in segments]
    wandb.teardown()  # W&B's service writes the run files after finish() returns: it has, once it is stopped

    history: dict[str, list[tuple[int, float]]] = {}
    config, artifacts, exits = {}, {}, []
    for file in files:
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                for item in record.history.item:  # a key with a slash comes as nested_key
                    key, value = item.key or "/".join(item.nested_key), json.loads(item.value_json)
                    if key.startswith(("step/", "epoch/", "final/")):
                        history.setdefault(key, []).append((record.history.step.num, value))
            elif kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "artifact":
                artifacts[record.artifact.type] = sorted(e.path for e in record.artifact.manifest.contents)
            elif kind == "exit":
                exits.append(record.exit.exit_code)

    assert history == expected(run.directory)  # every step, epoch and final record once, as metrics.jsonl
    assert len(history["step/loss"]) == 8 and len(history["epoch/loss"]) == 2
    resolved = run.folder.read_recipe()
    assert {key: config[key] for key in resolved} == json.loads(json.dumps(resolved))
    plots = sorted(f"plots/{p.name}" for p in run.folder.plots.iterdir())
    # resumes.jsonl: the resume changed a setting (the callback's mode), and says so
    hand_over = ["recipe.yaml", "report.md", "resumes.jsonl", "summary.json"]
    assert plots and artifacts["report"] == sorted([*plots, *hand_over])
    assert exits == [1, 0]  # the crash, then the finished run
    assert_no_secrets(run.directory, tmp_path / "wandb-home")


# -- MLflow ---------------------------------------------------------------------------------------------

@pytest.fixture
def mlflow_client(monkeypatch):
    """MlflowClient, with the variables the callback sets restored afterwards."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return MlflowClient


def mlflow_history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    run = client.get_run(run_id)
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in run.data.metrics}


def artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


def test_mlflow_file_store_holds_params_metrics_and_artifacts(tmp_path, mlflow_client, secrets, monkeypatch):
    from clrun.plugins.callbacks.tracking_common import flat

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # recent MLflow 3 refuses a file store unless asked
    store = (tmp_path / "mlruns").as_uri()
    run = clrun.train(recipe(tmp_path, "m", f"{{name: clrun/mlflow, tracking_uri: '{store}', log_encoder: true}}"))

    client = mlflow_client(store)
    run_id = state(run.directory, "mlflow")["run_id"]
    found = client.get_run(run_id)
    assert (found.info.status, found.info.run_name) == ("FINISHED", "m")
    resolved = run.folder.read_recipe()
    params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat(resolved).items()}
    assert found.data.params == params
    assert found.data.params["optimizer.lr"] == "0.001" and found.data.params["backbone.name"] == "timm/test_resnet"
    assert mlflow_history(client, run_id) == expected(run.directory)
    plots = sorted(f"plots/{p.name}" for p in run.folder.plots.iterdir())
    assert plots and artifact_paths(client, run_id) == sorted(
        [*plots, "encoder/encoder.safetensors", "recipe.yaml", "report.md", "summary.json"])
    assert_no_secrets(run.directory, tmp_path / "mlruns")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """``mlflow server`` on a loopback port with a file store and served artifacts; its URI."""
    pytest.importorskip("mlflow")
    pytest.importorskip("flask")  # the server's own dependencies: the full `mlflow` package
    root, port = tmp_path_factory.mktemp("mlflow-server"), free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", (root / "store").as_uri(), "--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    with open(root / "server.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield uri
    finally:
        os.killpg(server.pid, 15)  # the server and its uvicorn worker, which it started in its own session
        server.wait(timeout=30)


@pytest.mark.usefixtures("no_report")
def test_mlflow_server_run_requeued_continues_the_same_run(tmp_path, mlflow_client, mlflow_server, secrets,
                                                           crash_after_first_checkpoint):
    callback = f"{{name: clrun/mlflow, tracking_uri: '{mlflow_server}', experiment: resume}}"
    requeued = "train.auto_resume=true"  # a scheduler's requeue: the same command continues the run's folder
    folder = crash_after_first_checkpoint(recipe(tmp_path, "s", callback, requeued))
    client = mlflow_client(mlflow_server)
    run_id = state(folder, "mlflow")["run_id"]
    assert client.get_run(run_id).info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run_id, "step/loss")] == [1, 2, 3, 4]

    run = clrun.train(recipe(tmp_path, "s", callback, requeued))
    assert run.directory == folder and state(folder, "mlflow")["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert mlflow_history(client, run_id) == expected(run.directory)  # each step once, as metrics.jsonl
    assert artifact_paths(client, run_id) == ["recipe.yaml", "summary.json"]  # no report in this test
    assert_no_secrets(run.directory)


class SilentServer:
    """A port that accepts connections and never answers (a hung server): requests wait for their timeout."""

    def __enter__(self) -> str:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)  # the kernel completes the handshakes; nothing ever reads
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self.socket.close()


def timed(train) -> tuple[float, object]:
    start = time.monotonic()
    run = train()
    return time.monotonic() - start, run


def epoch_times(run) -> list[float]:
    return [r["epoch_time_s"] for r in records(run.directory) if r["kind"] == "epoch"]


@pytest.mark.usefixtures("no_report")
def test_a_down_or_silent_server_costs_training_nothing_and_the_records_sync_later(
        tmp_path, mlflow_client, mlflow_server, capfd):
    from clrun.plugins.callbacks.mlflow import sync

    def run_with(name: str, uri: str | None):
        callback = f"{{name: clrun/mlflow, tracking_uri: '{uri}', timeout_s: 2}}" if uri else ""
        return timed(lambda: clrun.train(recipe(tmp_path, name, callback)))

    down, refused = run_with("refused", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with SilentServer() as silent_uri:
        hung, silent = run_with("silent", silent_uri)
    baseline, plain = run_with("baseline", None)  # last: the others paid for the first run's warm-up
    err = capfd.readouterr().err

    # Training went on, at its own speed: the requests run on the sender's thread, each bounded by timeout_s
    # (2 s) without MLflow's retries; the end of the run waits for them at most timeout_s.
    for run in (refused, silent):
        assert run.epoch == 2 and run.summary["loss"] == plain.summary["loss"]
        assert max(epoch_times(run)) < max(epoch_times(plain)) + 1.0
    assert down < baseline + 5 and hung < baseline + 2 + 5, (baseline, down, hung)
    assert err.count("warning: clrun/mlflow: could not reach http://127.0.0.1:") == 2
    # Both requests failed within the wait (refused at once; the silent one after its 2 s, not retried):
    assert err.count("warning: clrun/mlflow: the run ended while http://127.0.0.1:") == 2
    assert f"python -m clrun.plugins.callbacks.mlflow {refused.directory}" in err

    # The run folder is the local copy: sent later, the server holds exactly what metrics.jsonl holds.
    run_id = sync(refused.directory, mlflow_server)
    client = mlflow_client(mlflow_server)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert mlflow_history(client, run_id) == expected(refused.directory)
    assert sync(refused.directory) == run_id  # nothing left to send: the same run, no record twice
    assert mlflow_history(client, run_id) == expected(refused.directory)
