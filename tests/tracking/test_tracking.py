"""Experiment tracking (`--track`, a study file's `tracking:`) against the real things: a real
`mlflow server` on 127.0.0.1 with a temporary store, and the real W&B client in offline mode whose
run files are read back. One tiny study (4 jobs) is run once for the module, with its tracker down;
the tests then catch the trackers up and check that reruns add no run twice."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ftlab.cli import main
from ftlab.kinds.tracking import TrackerName
from ftlab.tracking.base import curve_metrics, evaluation_metrics, flatten

STUDY = {
    "name": "tiny-track",
    "bases": ["scratch:tiny"],
    "datasets": ["synthetic-arith"],
    "train": {"fixed": {"train.max_steps": 2, "train.batch_size": 4, "data.trunc_train": 16, "data.val_size": 0,
                        "data.max_length": 64, "train.report_to": ["none"], "train.logging_steps": 1},
              "grid": {"peft.method": ["LoRa"]}, "seeds": [0]},
    "evaluate": {"datasets": ["synthetic-arith"], "limit": 4,
                 "settings": {"eval.backend": "canned", "eval.backend_options": {"response": "\\boxed{4}"}}},
}
KINDS = {"snapshot": 1, "train": 1, "evaluate": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(ws: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ftlab", "--workdir", str(ws), *args], capture_output=True,
                          text=True, timeout=600, env=full, cwd=ws)


def plan_jobs(ws: Path) -> dict[str, dict]:
    plan = json.loads((ws / "Testing" / "studies" / STUDY["name"] / "plan.json").read_text())
    return {j["id"]: j for j in plan["jobs"]}


# ---------------------------------------------------------------------------------------------
# fast: settings, readers


def test_an_unknown_tracker_lists_the_valid_ones(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    assert main(["--workdir", str(tmp_path), "study", "run", str(path), "--dry-run", "--track", "mlfow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tracking.to='mlfow'" in err and "valid: none, mlflow, wandb" in err


def test_a_missing_package_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(TrackerName, "installed", lambda self: False)
    assert main(["--workdir", str(tmp_path), "evaluate", "scratch:tiny", "--track", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs the wandb package" in err and "ftlab[track]" in err


def test_the_readers_turn_curves_and_metrics_documents_into_metrics():
    assert flatten({"train": {"lr": 1e-3, "seeds": [0, 1]}, "peft": {}}) == {"train.lr": 1e-3, "train.seeds": [0, 1],
                                                                             "peft": {}}
    curve = curve_metrics([{"loss": 2.0, "step": 1, "epoch": 0.5}, {"loss": 1.5, "step": 2, "note": "x"}])
    assert curve == [("loss", 2.0, 1), ("epoch", 0.5, 1), ("loss", 1.5, 2)]
    doc = {"datasets": {"arc:ll": {"n": 10, "metrics": {"accuracy": 0.5, "acc_norm": None},
                                   "intervals": {"accuracy": [0.2, 0.8]}}}, "summary": {"mean_accuracy": 0.5}}
    assert sorted(evaluation_metrics(doc)) == sorted([
        ("arc_ll.accuracy", 0.5, None), ("arc_ll.accuracy.ci_low", 0.2, None), ("arc_ll.accuracy.ci_high", 0.8, None),
        ("arc_ll.n", 10.0, None), ("summary.mean_accuracy", 0.5, None)])


class FakeSession:
    """A tracker in memory: runs by key under their parent."""

    def __init__(self, store: dict, fail_on: str | None):
        self.store, self.fail_on = store, fail_on

    def parent(self, record):
        if self.fail_on == "open":
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        self.store.setdefault(record.key, {})
        return record.key

    def logged(self, parent, keys):
        return set(self.store.get(parent, {})) & set(keys)

    def log(self, record, parent):
        if self.fail_on == record.key:
            raise TimeoutError("the server stopped answering")
        self.store[parent][record.key] = record

    def attach(self, parent, record, files):
        self.store[parent]["files"] = list(files)

    def close(self):
        pass


def fake_trackers(monkeypatch, store: dict, fail_on: str | None = None):
    from ftlab.registry import Registry
    from ftlab.tracking import trackers

    registry = Registry("tracker")
    registry.add("mlflow", type("Fake", (), {"name": "mlflow", "open": lambda self, *a: FakeSession(store, fail_on)})())
    monkeypatch.setattr(trackers, "TRACKERS", registry)
    return trackers


def test_a_sync_logs_what_is_missing_and_skips_a_job_whose_results_cannot_be_read(tmp_path, monkeypatch, caplog):
    from ftlab.config import TrackingConfig
    from ftlab.errors import FtlabError
    from ftlab.paths import Workspace
    from ftlab.tracking.base import RunRecord

    store: dict = {}
    trackers = fake_trackers(monkeypatch, store)
    settings, ws, parent = TrackingConfig(to="mlflow"), Workspace(tmp_path), RunRecord("study:s", "s")

    def unreadable():
        raise FtlabError("metrics file Testing/metrics/b.json is not valid JSON")

    sync = trackers.Sync(settings, ws, "s", parent)
    sync.log("a", lambda: RunRecord("a", "a"))  # as the job finishes
    done = sync.finish([("a", lambda: RunRecord("a", "a")), ("b", unreadable), ("c", lambda: RunRecord("c", "c"))])
    assert sorted(store["study:s"]) == ["a", "c", "files"] and (done.logged, done.present) == (2, 0)
    assert "b not logged, its results could not be read" in caplog.text
    again = trackers.sync(settings, ws, "s", parent=parent, children=[("a", None), ("b", lambda: RunRecord("b", "b"))])
    assert sorted(store["study:s"]) == ["a", "b", "c", "files"] and (again.logged, again.present) == (1, 1)


def test_a_tracker_that_is_down_is_one_warning_for_the_whole_run(tmp_path, monkeypatch, caplog):
    from ftlab.config import TrackingConfig
    from ftlab.paths import Workspace
    from ftlab.tracking.base import RunRecord

    trackers = fake_trackers(monkeypatch, {}, fail_on="open")
    sync = trackers.Sync(TrackingConfig(to="mlflow", uri="http://127.0.0.1:9"), Workspace(tmp_path), "s",
                         RunRecord("study:s", "s"))
    for key in "abc":
        sync.log(key, lambda key=key: RunRecord(key, key))
    assert sync.finish([(k, lambda k=k: RunRecord(k, k)) for k in "abc"]) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["tracking to mlflow (http://127.0.0.1:9) failed, results are kept and the next run logs "
                        "them: ConnectionRefusedError: [Errno 111] Connection refused"]


# ---------------------------------------------------------------------------------------------
# one study, its tracker down on the first run


@pytest.fixture(scope="module")
def study_ws(tmp_path_factory):
    """The study run once with `--track mlflow` at a server that is not there: every job finishes,
    the report is written, and the outage is one warning line."""
    ws = tmp_path_factory.mktemp("study")
    path = ws / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    down = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = run_cli(ws, "study", "run", str(path), "--track", "mlflow", "--track-uri", down)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 jobs ran, 0 were already done, 0 failed, 0 skipped" in r.stdout
    assert (ws / "Testing" / "studies" / STUDY["name"] / "report.html").is_file()
    warnings = [line for line in (r.stdout + r.stderr).splitlines() if "tracking to mlflow" in line]
    assert len(warnings) == 1 and "the next run logs them" in warnings[0], r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert time.monotonic() - t0 < 240  # an outage costs no retries with backoff
    return ws, path


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "artifacts"),
           "--workers", "1"]
    log = (store / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=store, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (store / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def mlflow_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(STUDY["name"])
    return list(client.search_runs([experiment.experiment_id], max_results=1000)), client


@pytest.mark.slow
def test_a_study_tracked_to_a_real_mlflow_server_is_one_parent_and_one_child_per_job(study_ws, mlflow_server):
    ws, path = study_ws
    jobs = plan_jobs(ws)
    r = run_cli(ws, "study", "run", str(path), "--track", "mlflow", "--track-uri", mlflow_server)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 jobs ran, 4 were already done" in r.stdout
    assert "tracking: 4 run(s) logged to mlflow" in r.stderr, r.stderr  # the outage caught up
    assert not [line for line in r.stderr.splitlines() if not line.startswith("INFO ftlab")], r.stderr

    runs, client = mlflow_runs(mlflow_server)
    parents = [run for run in runs if run.data.tags.get("kind") == "study"]
    assert len(parents) == 1 and parents[0].info.run_name == STUDY["name"]
    parent = parents[0].info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"report.html", "report.md", "ranking.csv", "vs_baseline.csv"} <= artifacts
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent]
    assert len(children) == len(runs) - 1 == len(jobs) == 4
    assert {run.data.tags["job_id"] for run in children} == set(jobs)
    for run in children:
        job = jobs[run.data.tags["job_id"]]
        tags = run.data.tags
        assert tags["kind"] == job["kind"] and tags["study"] == STUDY["name"]
        assert tags["model_folder"].startswith("Models/") and (ws / tags["model_folder"]).is_dir()
        assert run.info.status == "FINISHED"
        if job["kind"] == "evaluate":
            assert run.data.params["eval.limit"] == "4"
            assert {"synthetic-arith.accuracy", "synthetic-arith.accuracy.ci_low",
                    "synthetic-arith.accuracy.ci_high"} <= set(run.data.metrics)
        else:  # the job's resolved config
            assert run.data.params["model.name"] == "scratch:tiny" and "train.learning_rate" in run.data.params
        if job["kind"] == "train":
            assert run.data.params["peft.method"] == "LoRa" and run.data.params["train.seed"] == "0"
            curve = client.get_metric_history(run.info.run_id, "loss")
            assert [m.step for m in curve] == [1, 2]  # the training curve, step by step

    again = run_cli(ws, "study", "run", str(path), "--track", "mlflow", "--track-uri", mlflow_server)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "tracking: 0 run(s) logged to mlflow" in again.stderr and "4 already there" in again.stderr
    after, _ = mlflow_runs(mlflow_server)
    assert sorted(run.info.run_id for run in after) == sorted(run.info.run_id for run in runs)

    # `study report` with other analysis settings replaces the parent's report, on the same runs.
    rep = run_cli(ws, "study", "report", str(path), "analysis.alpha=0.01", "--track", "mlflow",
                  "--track-uri", mlflow_server)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "tracking: 0 run(s) logged to mlflow" in rep.stderr and "4 already there" in rep.stderr
    final, client = mlflow_runs(mlflow_server)
    assert sorted(run.info.run_id for run in final) == sorted(run.info.run_id for run in runs)
    report = Path(client.download_artifacts(parent, "report.md", str(ws / "downloaded")))
    assert report.read_text() == (ws / "Testing" / "studies" / STUDY["name"] / "report.md").read_text()
    assert "Holm-adjusted p <= 0.01" in report.read_text()


# ---------------------------------------------------------------------------------------------
# W&B, offline: the client's own run files, read back


def wandb_records(path: Path) -> list:
    """The protobuf records of a `.wandb` run file (W&B's LevelDB-style log: a 7-byte header, then
    32 KiB blocks of chunks, each with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_runs(ws: Path) -> dict[str, dict]:
    """run id -> {config, job_type, group, history steps, summary keys, artifacts}, over every offline run folder."""
    out: dict[str, dict] = {}
    for folder in sorted((ws / "Testing" / "tracking" / "wandb").glob("offline-run-*")):
        for path in folder.glob("run-*.wandb"):
            for record in wandb_records(path):
                kind = record.WhichOneof("record_type")
                if kind == "run":
                    run = out.setdefault(record.run.run_id, {"config": {}, "history": [], "summary": set(),
                                                             "artifacts": 0, "folders": set()})
                    run.update(job_type=record.run.job_type, group=record.run.run_group, name=record.run.display_name)
                    run["folders"].add(folder.name)
                    current = run
                    for item in record.run.config.update:
                        run["config"][item.key] = json.loads(item.value_json)
                elif kind == "history":
                    row = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                    current["history"].append({**row, "step": record.history.step.num})
                elif kind == "summary":
                    current["summary"] |= {i.key or ".".join(i.nested_key) for i in record.summary.update}
                elif kind == "artifact":
                    current["artifacts"] += 1
    return out


@pytest.mark.slow
def test_a_study_tracked_to_wandb_offline_writes_one_run_per_job_and_one_for_the_study(study_ws, tmp_path):
    # A copy of the study's workspace (job ids do not depend on where it is), with fewer items per
    # evaluation: the two evaluations run now and are logged as each finishes, the snapshot and the
    # training are caught up at the end.
    ws = tmp_path / "ws"
    shutil.copytree(study_ws[0], ws)
    path = ws / "study.yaml"
    env = {"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(ws / ".wandb"), "WANDB_CACHE_DIR": str(ws / ".wandb"),
           "WANDB_DATA_DIR": str(ws / ".wandb")}
    r = run_cli(ws, "study", "run", str(path), "evaluate.limit=3", "--track", "wandb", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 jobs ran, 2 were already done" in r.stdout
    assert "tracking: 4 run(s) logged to wandb" in r.stderr, r.stderr
    jobs = plan_jobs(ws)
    assert not [line for line in (r.stdout + r.stderr).splitlines() if line.lower().startswith("wandb")
                or "wandb sync" in line], r.stdout + r.stderr  # no banner, no sync hints
    assert not [line for line in r.stderr.splitlines() if not line.startswith("INFO ftlab")], r.stderr
    runs = wandb_runs(ws)
    assert len(runs) == len(jobs) + 1
    study = [run for run in runs.values() if run["job_type"] == "study"]
    assert len(study) == 1 and study[0]["artifacts"] == 1
    children = {run["config"]["tag.job_id"]: run for run in runs.values() if run["job_type"] != "study"}
    assert set(children) == set(jobs)
    for job_id, run in children.items():
        assert run["job_type"] == jobs[job_id]["kind"] and run["group"] == STUDY["name"]
        assert run["config"]["tag.model_folder"].startswith("Models/")
        if run["job_type"] == "train":
            assert [h["step"] for h in run["history"]] == [1, 2] and all("loss" in h for h in run["history"])
            assert run["config"]["peft.method"] == "LoRa"
        if run["job_type"] == "evaluate":
            assert "synthetic-arith.accuracy.ci_high" in run["summary"]

    again = run_cli(ws, "study", "run", str(path), "evaluate.limit=3", "--track", "wandb", env=env)
    assert again.returncode == 0 and "tracking: 0 run(s) logged to wandb" in again.stderr, again.stderr
    assert set(wandb_runs(ws)) == set(runs)  # the same run ids: nothing twice


# ---------------------------------------------------------------------------------------------
# `ftlab evaluate --track mlflow`: the embedded store in the workspace


@pytest.mark.slow
def test_an_evaluation_tracked_to_the_local_mlflow_store_is_one_run_kept_by_a_rerun(tmp_path, caplog):
    args = ["--workdir", str(tmp_path), "evaluate", "scratch:tiny", "--datasets", "synthetic-arith", "--limit", "4",
            "--name", "tiny-eval", "eval.backend=canned", "eval.backend_options={response: '\\boxed{4}'}",
            "--track", "mlflow"]
    caplog.set_level("INFO", logger="ftlab")
    assert main(args) == 0  # in this process: one mlflow import for the run and the checks
    assert "tracking: 1 run(s) logged to mlflow (the local store)" in caplog.text, caplog.text
    store = f"sqlite:///{tmp_path / 'Testing' / 'tracking' / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("ftlab-evaluate")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny-eval" and run.data.tags["metrics_file"] == "tiny-eval.json"
    assert run.data.params["eval.limit"] == "4" and run.data.params["model.name"] == "scratch:tiny"
    assert {"synthetic-arith.accuracy", "synthetic-arith.accuracy.ci_low"} <= set(run.data.metrics)

    caplog.clear()
    assert main(args) == 0  # every task up to date: kept, and no second run
    assert "tracking: 0 run(s) logged to mlflow" in caplog.text, caplog.text
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_train_report_to_mlflow_logs_to_the_workspace_store_unless_told_otherwise(tmp_path, monkeypatch):
    """transformers' MLflow callback writes where MLFLOW_TRACKING_URI says: unset, the workspace's store."""
    from ftlab.config import TrainRunConfig, load_config
    from ftlab.paths import Workspace
    from ftlab.train.settings import check_can_run

    cfg = load_config(TrainRunConfig, overrides=["model.name=scratch:tiny", "train.report_to=[tensorboard,mlflow]"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    check_can_run(cfg, Workspace(tmp_path), "run")
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'Testing' / 'tracking' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    check_can_run(cfg, Workspace(tmp_path), "run")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
