"""The engine's side of a cluster losing jobs (ftlab.jobs.engine.Engine.lost), the claims a retried
attempt takes over (ftlab.jobs.locks), and resources a backend cannot provide. The real thing, a
node killed under a running study, is in tests/cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ftlab.errors import FtlabError
from ftlab.io import read_jsonl
from ftlab.jobs import backends
from ftlab.jobs.engine import BLOCKED, DONE, FAILED, JOB_KINDS, Engine, EngineSettings, Job, Resources, Status, TODO
from ftlab.jobs.locks import JOB_ENV, NODE_ENV, JobLock, heartbeat_s, lock_path, remote_stale_s
from ftlab.jobs.process import ProcessResult, process_result
from ftlab.paths import Workspace


class FileKind:
    """A job whose output is Testing/out/<name>.txt; the test's backend plays its process."""

    name = "file"

    def status(self, job: Job, workspace: Workspace) -> Status:
        return Status(DONE, "written") if self.output(job, workspace).is_file() else Status(TODO, "not written")

    def output(self, job: Job, workspace: Workspace) -> Path:
        return workspace.root / "Testing" / "out" / f"{job.name}.txt"

    def command(self, job: Job, workspace: Workspace) -> list[str]:
        return ["doctor"]

    def lock_path(self, job: Job, workspace: Workspace) -> Path:
        return lock_path(workspace.jobs_dir, job.name)

    def finished(self, job, workspace, result, ok) -> str:
        return ""


@pytest.fixture
def file_kind(monkeypatch):
    kind = FileKind()
    monkeypatch.setitem(JOB_KINDS._items, "file", ("file", kind))
    return kind


def graph() -> list[Job]:
    return [Job("a", "file", "a"), Job("b", "file", "b", deps=("a",))]


def scripted_backend(kind: FileKind, losses: dict[str, int]):
    """Loses each job's first `losses[name]` attempts as a dying node would, then writes its output."""

    def run(engine: Engine) -> None:
        while (claimed := engine.next_ready()) is not None:
            job, task = claimed
            assert task.env[JOB_ENV] == job.id  # the id its output claim records
            while True:
                if task.attempt <= losses.get(job.name, 0):
                    lost = ProcessResult(False, None, 0.5, f"Ray task failed: NodeDiedError: node {task.attempt} died",
                                         node=f"node-{task.attempt}")
                    if engine.lost(task, lost):
                        continue
                    break
                path = kind.output(job, engine.workspace)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("ok")
                engine.finish(task, ProcessResult(True, 0, 1.0, node=f"node-{task.attempt}"))
                break

    return run


def run(tmp_path: Path, kind: FileKind, losses: dict[str, int], retries: int):
    ws = Workspace(tmp_path)
    lines: list[str] = []
    engine = Engine(graph(), ws, ws.jobs_dir, EngineSettings(retries=retries), echo=lines.append)
    outcomes = {o.job.name: o for o in engine.run(scripted_backend(kind, losses))}
    records = {p.stem: json.loads(p.read_text()) for p in ws.jobs_dir.glob("*.json")}
    journal = [(e["name"], e["event"], e.get("attempt")) for e in read_jsonl(ws.jobs_dir / "journal.jsonl")]
    return outcomes, records, journal, lines


def test_a_lost_attempt_runs_again_and_the_ledger_keeps_each_attempt(tmp_path, file_kind):
    outcomes, records, journal, lines = run(tmp_path, file_kind, {"a": 1}, retries=2)
    assert outcomes["a"].state == DONE and outcomes["b"].state == DONE
    assert journal[:4] == [("a", "start", 1), ("a", "lost", 1), ("a", "start", 2), ("a", "done", 2)]
    assert records["a"]["attempts"] == 2 and records["a"]["node"] == "node-2"
    (lost,) = records["a"]["lost_attempts"]
    assert lost["attempt"] == 1 and lost["node"] == "node-1" and "NodeDiedError" in lost["error"]
    assert records["b"]["attempts"] == 1 and records["b"]["lost_attempts"] == []
    assert any(line.startswith("retry   file a  (attempt 2 of 3: the last was lost: Ray task failed") for line in lines)
    assert not list((tmp_path / "Testing" / ".jobs" / ".locks").glob("*.lock"))


def test_when_the_retries_are_spent_the_job_fails_and_its_dependants_are_skipped(tmp_path, file_kind):
    outcomes, records, journal, _ = run(tmp_path, file_kind, {"a": 5}, retries=1)
    assert outcomes["a"].state == FAILED and outcomes["b"].state == BLOCKED
    assert "lost 2 time(s) to system failures, the last: Ray task failed: NodeDiedError: node 2 died" in records["a"]["error"]
    assert "(raise --retries to try more)" in records["a"]["error"]
    assert journal == [("a", "start", 1), ("a", "lost", 1), ("a", "start", 2), ("a", "lost", 2), ("a", "failed", 2)]
    assert records["a"]["attempts"] == 2 and len(records["a"]["lost_attempts"]) == 1
    assert not list((tmp_path / "Testing" / ".jobs" / ".locks").glob("*.lock"))


def test_no_retries_means_the_first_loss_fails_the_job(tmp_path, file_kind):
    outcomes, records, journal, _ = run(tmp_path, file_kind, {"a": 1}, retries=0)
    assert outcomes["a"].state == FAILED and outcomes["b"].state == BLOCKED
    assert journal == [("a", "start", 1), ("a", "lost", 1), ("a", "failed", 1)]
    with pytest.raises(FtlabError, match=r"--retries -1 must be >= 0"):
        EngineSettings(retries=-1).validate()


def test_a_lost_job_no_live_node_can_hold_fails_instead_of_waiting(tmp_path, file_kind):
    ws = Workspace(tmp_path)
    engine = Engine(graph(), ws, ws.jobs_dir, EngineSettings(retries=2), echo=lambda line: None)

    def backend(engine: Engine) -> None:
        job, task = engine.next_ready()
        lost = ProcessResult(False, None, 0.5, "Ray task failed: NodeDiedError: its node died")
        assert not engine.lost(task, lost, "needs 1 CPU(s), 1 big_gpu on one node; no live node has that")

    outcomes = {o.job.name: o for o in engine.run(backend)}
    assert outcomes["a"].state == FAILED and outcomes["b"].state == BLOCKED
    assert outcomes["a"].detail == ("lost to a system failure (Ray task failed: NodeDiedError: its node died), and needs "
                                    "1 CPU(s), 1 big_gpu on one node; no live node has that; run it again once such a "
                                    "node is back")
    events = [e["event"] for e in read_jsonl(ws.jobs_dir / "journal.jsonl")]
    assert events == ["start", "lost", "failed"]


def _foreign_claim(path: Path, job: str) -> None:
    """A claim by a process on another machine that touched it just now (alive, as far as anyone
    here can tell), made by an attempt of `job`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": 1, "host": "another-machine", "start_time": None, "token": "t",
                                "acquired_at": "", "job": job}))


def test_a_retried_attempt_takes_over_its_lost_attempts_claim_and_nothing_else(tmp_path, monkeypatch):
    path = tmp_path / "Models" / ".locks" / "run.lock"
    _foreign_claim(path, job="job-1")
    monkeypatch.delenv(JOB_ENV, raising=False)
    assert not JobLock(path).acquire()  # a user's own `ftlab train`: waits out the heartbeat window
    monkeypatch.setenv(JOB_ENV, "job-2")
    assert not JobLock(path).acquire()  # another job's attempt
    monkeypatch.setenv(JOB_ENV, "job-1")
    lock = JobLock(path)
    assert lock.acquire()  # the same job again: its earlier attempt was lost
    assert lock.owner().job == "job-1"
    lock.release()
    assert not path.exists()


def test_node_name_and_heartbeat_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(NODE_ENV, "machine-a")
    monkeypatch.setenv("FTLAB_LOCK_HEARTBEAT_S", "0.5")
    assert heartbeat_s() == 0.5 and remote_stale_s() == 5.0
    lock = JobLock(tmp_path / "x.lock")
    assert lock.acquire() and lock.owner().host == "machine-a"
    assert process_result(0, 1.0, []).host == "machine-a"  # the ledger's host names the same machine
    monkeypatch.setenv(NODE_ENV, "machine-b")  # now the lock looks like another machine's, touched just now
    assert not JobLock(tmp_path / "x.lock").acquire()
    past = os.path.getmtime(tmp_path / "x.lock") - 6
    os.utime(tmp_path / "x.lock", (past, past))  # more than ten missed heartbeats
    assert JobLock(tmp_path / "x.lock").acquire()
    monkeypatch.setenv("FTLAB_LOCK_HEARTBEAT_S", "soon")
    with pytest.raises(FtlabError, match="FTLAB_LOCK_HEARTBEAT_S='soon' must be a number of seconds"):
        heartbeat_s()


def test_the_local_backend_refuses_what_this_machine_cannot_provide(tmp_path, file_kind):
    ws = Workspace(tmp_path)
    jobs = [Job("a", "file", "a", resources=Resources(custom=(("big_gpu", 1.0),))),
            Job("b", "file", "b", deps=("a",)),
            Job("c", "file", "c", resources=Resources(memory_gb=1e6))]
    lines: list[str] = []
    engine = Engine(jobs, ws, ws.jobs_dir, EngineSettings(), echo=lines.append)
    outcomes = {o.job.name: o for o in engine.run(backends.BACKENDS.get("local"))}
    assert outcomes["a"].state == FAILED and outcomes["b"].state == BLOCKED and outcomes["c"].state == FAILED
    assert outcomes["a"].detail == ("needs the custom resource(s) big_gpu, which only a Ray cluster declares: run it "
                                    "with --backend ray, or drop resources.<kind>.custom from the study")
    assert outcomes["c"].detail.startswith("needs 1e+06 GB of memory; this machine has ")
    assert not (tmp_path / "Testing" / "out").exists()  # nothing ran
