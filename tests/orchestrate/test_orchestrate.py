"""Orchestrator: discovery reasons, locks, failure capture, and real sweeps in subprocesses
(a failing model, kill -9 and resume, two orchestrators at once, the Ray backend)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ftlab.errors import FtlabError
from ftlab.eval.evaluator import expected_settings
from ftlab.eval.records.results import request_hash
from ftlab.io import atomic_write_json, read_json, read_jsonl
from ftlab.orchestrate.discovery import (
    BAD_FOLDER, FAILED, FAILED_EARLIER, INCOMPLETE, MISSING, STALE, UP_TO_DATE, EvalOptions, plan_sweep,
)
from ftlab.jobs.locks import REMOTE_STALE_S, JobLock
from ftlab.jobs.process import run_process, summarize_failure
from ftlab.paths import Workspace

REPO = Path(__file__).resolve().parents[2]
TASK = "synthetic-arith"  # generated offline, no dataset download
CANNED_YAML = 'eval:\n  backend: canned\n  backend_options: {response: "\\\\boxed{4}"}\n'


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    """A real scratch:tiny model saved once; tests copy it into their Models/ folders."""
    from ftlab.models.sources import load_model

    folder = tmp_path_factory.mktemp("tiny") / "model"
    model, tok, _ = load_model("scratch:tiny", seed=1)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_model(ws: Workspace, template: Path, name: str) -> Path:
    from ftlab.naming import parse_run_name
    from ftlab.schema import write_training_metadata

    dst = ws.models_dir / name
    shutil.copytree(template, dst)
    rn = parse_run_name(name)
    write_training_metadata(dst, {
        "kind": "model", "run_name": name, "name_fields": dataclasses.asdict(rn),
        "base_model": {"ref": "scratch:tiny", "source_kind": "scratch", "revision": None, "base_name": "scratch-tiny"},
        "dataset": None, "method": rn.method, "peft": None, "adapter_only": False, "merged": False,
        "quantization": {"method": "NoQuant"}, "history": [], "training_args": {}, "results": {},
        "environment": {}, "created_at": "2026-01-01T00:00:00+00:00",
    })
    return dst


def canned_options(ws: Workspace, limit: int = 3) -> EvalOptions:
    cfg = ws.root / "canned.yaml"
    cfg.write_text(CANNED_YAML)
    return EvalOptions(datasets=[TASK], limit=limit, config=str(cfg))


def evaluate_in_process(ws: Workspace, folder: Path, options: EvalOptions) -> dict:
    from ftlab.eval.evaluator import evaluate

    return evaluate(str(folder.resolve()), options.resolve(folder.resolve()), ws)


def reasons(items) -> dict[str, str]:
    return {i.model: i.reason for i in items}


# ---------------------------------------------------------------------------------------------
# discovery


def test_discovery_reasons(tmp_path, tiny_template):
    ws = Workspace(tmp_path)
    opts = canned_options(ws)
    names = ["scratch-tiny-base", "scratch-tiny-arc_SFT_LoRa16_NoQuant", "scratch-tiny-boolq_SFT_LoRa16_NoQuant",
             "scratch-tiny-arc_SFT_DoRa8_NoQuant", "scratch-tiny-arc_SFT_NoPeft_NoQuant", "scratch-tiny-boolq_SFT_NoPeft_NoQuant"]
    folders = {n: make_model(ws, tiny_template, n) for n in names}
    # Not models: half-built staging folder, hidden folder, folder without metadata.
    shutil.copytree(folders[names[0]], ws.models_dir / ".staging-scratch-tiny-x-1234")
    shutil.copytree(folders[names[0]], ws.models_dir / ".hidden")
    (ws.models_dir / "notes").mkdir()
    assert reasons(plan_sweep(ws, opts)) == {n: MISSING for n in names}

    up, partial, stale, failed, old_failed, broken = names
    for n in (up, partial, stale):
        evaluate_in_process(ws, folders[n], opts)
    # partial: killed mid-run -> samples written, document never completed.
    (ws.metrics_dir / f"{partial}.json").unlink()
    lines = read_jsonl(ws.metrics_dir / f"{partial}.samples.jsonl")
    (ws.metrics_dir / f"{partial}.samples.jsonl").write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[1])[:25])
    # stale: the task's result was made with another token cap.
    doc = read_json(ws.metrics_dir / f"{stale}.json")
    changed = json.loads(json.dumps(doc))
    changed["datasets"][TASK]["settings"]["generation"]["max_new_tokens"] = 99
    atomic_write_json(ws.metrics_dir / f"{stale}.json", changed)
    current = request_hash(expected_settings(opts.resolve(folders[failed].resolve())))
    atomic_write_json(ws.metrics_dir / f"{failed}.error.json", {"error": "CUDA out of memory", "request_hash": current})
    atomic_write_json(ws.metrics_dir / f"{old_failed}.error.json", {"error": "boom", "request_hash": "other"})
    (folders[broken] / "training_metadata.json").write_text("{oops")

    items = {i.model: i for i in plan_sweep(ws, opts)}
    assert {m: i.reason for m, i in items.items()} == {
        up: UP_TO_DATE, partial: INCOMPLETE, stale: STALE, failed: FAILED_EARLIER, old_failed: MISSING, broken: BAD_FOLDER,
    }
    assert "1 samples done" in items[partial].detail
    # The dry run names the task and the setting that changed.
    assert items[stale].detail == f"{TASK}: generation.max_new_tokens 99 -> 24"
    assert "CUDA out of memory" in items[failed].detail and "--retry-failed" in items[failed].detail
    assert [i.model for i in items.values() if i.runs] == sorted([partial, stale, old_failed])
    assert reasons(plan_sweep(ws, opts, retry_failed=True))[failed] == FAILED

    # Changing anything that affects answers makes finished tasks stale; batch size does not.
    assert reasons(plan_sweep(ws, dataclasses.replace(opts, batch_size=7)))[up] == UP_TO_DATE
    assert reasons(plan_sweep(ws, dataclasses.replace(opts, limit=4)))[up] == STALE
    assert reasons(plan_sweep(ws, dataclasses.replace(opts, overrides=["eval.system_prompt=Be brief."])))[up] == STALE

    # Per task: a second task is only missing, the first stays current; a setting that changes
    # only numeric answers makes only the numeric task stale.
    data = ws.root / "capitals.jsonl"
    data.write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    two = dataclasses.replace(opts, datasets=[TASK, str(data)])
    item = {i.model: i for i in plan_sweep(ws, two)}[up]
    assert (item.reason, item.detail) == (MISSING, f"{data} not evaluated yet")
    evaluate_in_process(ws, folders[up], two)
    assert reasons(plan_sweep(ws, two))[up] == UP_TO_DATE
    assert reasons(plan_sweep(ws, opts))[up] == UP_TO_DATE  # fewer tasks asked: the others are kept, not stale
    item = {i.model: i for i in plan_sweep(ws, dataclasses.replace(two, overrides=["eval.numeric_rel_tol=0.01"]))}[up]
    assert item.reason == STALE and item.detail == f"{TASK}: tolerance.rel 0.0 -> 0.01"

    # A result scored by an older rule is stale for that task (the evaluator rescores it from the
    # stored responses); so is one from an old document version, upgraded.
    old_rule = json.loads(json.dumps(doc))
    old_rule["datasets"][TASK]["settings"]["scoring_version"] = old_rule["datasets"][TASK]["scoring_version"] = 1
    atomic_write_json(ws.metrics_dir / f"{up}.json", old_rule)
    item = {i.model: i for i in plan_sweep(ws, opts)}[up]
    assert (item.reason, item.detail) == (STALE, f"{TASK}: scoring_version 1 -> 2")
    atomic_write_json(ws.metrics_dir / f"{up}.json", {"schema_version": 0, "model": up, "results": {TASK: {"n": 3, "accuracy": 1.0}}})
    item = {i.model: i for i in plan_sweep(ws, opts)}[up]
    assert item.reason == STALE and item.detail.startswith(f"{TASK}: scoring_version 1 -> 2; ")
    # A document the evaluator left as "running" (killed before this task finished) is incomplete.
    running = json.loads(json.dumps(doc))
    running["status"], running["datasets"] = "running", {}
    atomic_write_json(ws.metrics_dir / f"{up}.json", running)
    item = {i.model: i for i in plan_sweep(ws, opts)}[up]
    assert item.reason == INCOMPLETE and item.detail.startswith(f"interrupted run: {TASK} not finished")

    with pytest.raises(FtlabError, match="--model nope is not a model folder"):
        plan_sweep(ws, opts, only=["nope"])
    assert [i.model for i in plan_sweep(ws, opts, only=[up])] == [up]


def test_forwarded_options_hash_like_ftlab_evaluate(tmp_path):
    """The planner's task settings must be the ones the worker's `ftlab evaluate` stores, whatever
    the order of options and overrides, or every finished model would look stale."""
    from ftlab.cli import build_parser
    from ftlab.commands.evaluate import _split_tail, build_config
    from ftlab.commands.orchestrate import _split_overrides

    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval:\n  system_prompt: Be brief.\n  limit: 9\n")
    orch = build_parser(("orchestrate",))
    for argv in (["--datasets", "arc", "boolq", "eval.seed=3", "--limit", "2"],
                 ["--limit", "2", "eval.seed=3", "--datasets", "arc", "--batch-size", "3", "--config", str(cfg)],
                 ["--max-new-tokens", "7", "--config", str(cfg), "eval.limit=4"]):
        args = orch.parse_args(["orchestrate", *argv])
        datasets, overrides = _split_overrides(args)
        opts = EvalOptions(datasets=datasets, limit=args.limit, batch_size=args.batch_size,
                           max_new_tokens=args.max_new_tokens, config=args.config, overrides=overrides)
        ev_args = build_parser(("evaluate",)).parse_args(["evaluate", "/m", *opts.cli_args()])
        assert expected_settings(build_config(_split_tail(ev_args))) == expected_settings(opts.resolve("/m")), argv


def test_busy_models_are_reported_and_not_claimed(tmp_path, tiny_template):
    from ftlab.jobs.locks import lock_path
    from ftlab.orchestrate.sweep import Sweep, SweepSettings

    ws = Workspace(tmp_path)
    opts = canned_options(ws)
    make_model(ws, tiny_template, "scratch-tiny-base")
    lines: list[str] = []
    sweep = Sweep(ws, opts, SweepSettings(), echo=lines.append)
    other = JobLock(lock_path(sweep.metrics_dir, "scratch-tiny-base"))
    assert other.acquire()  # another orchestrator (alive: this very process) holds it
    (item,) = sweep.plan()
    assert item.reason == "busy" and f"pid {os.getpid()}" in item.detail
    item.reason = MISSING  # planned before the other orchestrator took it
    report = sweep.run([item])
    (outcome,) = report.outcomes
    assert outcome.status == "skipped" and outcome.reason == "busy" and f"pid {os.getpid()}" in outcome.detail
    assert not (ws.metrics_dir / "scratch-tiny-base.json").exists()  # not claimed, not evaluated
    assert lines == [f"skip    scratch-tiny-base  (busy: locked by pid {os.getpid()} on {socket.gethostname()} "
                     f"since {other.owner().acquired_at})"]
    other.release()
    report = Sweep(ws, opts, SweepSettings(), echo=lines.append).run()
    assert [(o.model, o.status) for o in report.outcomes] == [("scratch-tiny-base", "ok")]
    assert not lock_path(sweep.metrics_dir, "scratch-tiny-base").exists()

    # --retry-failed retries failures older than the sweep, not one a concurrent sweep just recorded.
    (ws.metrics_dir / "scratch-tiny-base.json").unlink()
    retry = Sweep(ws, opts, SweepSettings(retry_failed=True), echo=lines.append)
    atomic_write_json(ws.metrics_dir / "scratch-tiny-base.error.json", {"error": "OOM"})
    (item,) = retry.plan()
    assert item.reason == FAILED
    (outcome,) = retry.run([item]).outcomes
    assert outcome.status == "skipped" and "failed again in a concurrent sweep" in outcome.detail
    old = time.time() - 3600
    os.utime(ws.metrics_dir / "scratch-tiny-base.error.json", (old, old))
    (outcome,) = retry.run([item]).outcomes[-1:]
    assert outcome.status == "ok"
    assert not (ws.metrics_dir / "scratch-tiny-base.error.json").exists()  # removed once it succeeded


def test_bad_eval_options_fail_before_anything_runs(tmp_path, tiny_template, capsys):
    from ftlab.cli import main

    ws = Workspace(tmp_path)
    make_model(ws, tiny_template, "scratch-tiny-base")
    assert main(["--workdir", str(tmp_path), "orchestrate", "--limit", "0"]) == 2
    assert "eval.limit=0 must be positive" in capsys.readouterr().err
    assert main(["--workdir", str(tmp_path), "orchestrate", "eval.bacth_size=3"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert not ws.metrics_dir.exists()


# ---------------------------------------------------------------------------------------------
# locks


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_lock_basic_busy_and_stale_takeover(tmp_path):
    path = tmp_path / "m.lock"
    a = JobLock(path)
    assert a.acquire()
    data = json.loads(path.read_text())
    assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
    assert not JobLock(path).acquire()  # live owner (this process)
    a.release()
    assert not path.exists()

    # Owner dead on this host -> taken over.
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "token": "t", "start_time": None}))
    b = JobLock(path)
    assert b.acquire() and json.loads(path.read_text())["token"] == b.token
    b.release()

    # A PID that now belongs to another process (recorded start time differs) is dead too.
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": "t", "start_time": 1.0}))
    c = JobLock(path)
    assert c.acquire()
    c.release()

    # Another host: its PID means nothing here; never taken over while its heartbeat is fresh...
    path.write_text(json.dumps({"pid": _dead_pid(), "host": "some-other-host", "token": "t"}))
    assert not JobLock(path).acquire()
    # ...and taken over once the heartbeat stopped (that machine died or lost the shared storage).
    os.utime(path, (time.time() - REMOTE_STALE_S - 5, time.time() - REMOTE_STALE_S - 5))
    e = JobLock(path)
    assert e.acquire() and e.owner().pid == os.getpid()
    old = time.time() - 100
    os.utime(path, (old, old))
    e.touch()
    assert path.stat().st_mtime > old + 50
    e.release()
    path.write_text(json.dumps({"pid": _dead_pid(), "host": "some-other-host", "token": "t"}))

    # Empty lock (owner killed between create and write): only taken after the grace period.
    path.write_text("")
    assert not JobLock(path).acquire()
    os.utime(path, (time.time() - 120, time.time() - 120))
    d = JobLock(path)
    assert d.acquire() and d.owner().pid == os.getpid()


def _race(path: str, stale_release_at: float, queue) -> None:
    while time.time() < stale_release_at:
        time.sleep(0.001)
    lock = JobLock(path)
    won = lock.acquire()
    queue.put(won)
    time.sleep(1.0 if won else 0)  # hold it while the others try


def test_lock_race_on_a_stale_lock_has_one_winner(tmp_path):
    path = tmp_path / "m.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "token": "dead"}))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    go = time.time() + 1.0
    procs = [ctx.Process(target=_race, args=(str(path), go, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results.count(True) == 1


# ---------------------------------------------------------------------------------------------
# failure capture


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake_python.sh"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_run_process_reports_signals_timeouts_and_errors(tmp_path):
    killed = run_process([_fake_python(tmp_path, 'echo "loading"; kill -9 $$')])
    assert not killed.ok and killed.returncode == -signal.SIGKILL
    assert killed.error.startswith("killed by SIGKILL (out of memory?")
    assert killed.output_tail == ["loading"]

    slow = run_process([_fake_python(tmp_path, "sleep 30")], timeout_s=1.0)
    assert not slow.ok and slow.error == "timed out after 1 s and was killed" and slow.runtime_s < 10

    assert summarize_failure(2, ["x", "error: model folder /m has no config.json", ""]) == "model folder /m has no config.json"
    tb = ["Traceback (most recent call last):", '  File "x.py", line 1', "torch.OutOfMemoryError: CUDA out of memory."]
    assert summarize_failure(1, tb) == "torch.OutOfMemoryError: CUDA out of memory."


def test_an_evaluation_that_exits_0_without_metrics_is_a_failure(tmp_path, tiny_template):
    from ftlab.jobs.engine import Engine, EngineSettings
    from ftlab.jobs.process import ProcessResult
    from ftlab.orchestrate.sweep import Sweep, SweepSettings

    ws = Workspace(tmp_path)
    make_model(ws, tiny_template, "scratch-tiny-base")
    sweep = Sweep(ws, canned_options(ws), SweepSettings(), echo=lambda line: None)
    (item,) = sweep.plan()
    engine = Engine([sweep.job(item)], ws, ws.jobs_dir, EngineSettings(), echo=lambda line: None)
    job, task = engine.next_ready()
    engine.finish(task, ProcessResult(True, 0, 0.5))
    outcome = engine.outcomes[job.id]
    assert outcome.state == "failed" and outcome.detail.startswith("finished without writing its output")
    report = read_json(ws.metrics_dir / "scratch-tiny-base.error.json")
    assert report["error"].startswith("finished without writing its output") and report["exit_code"] == 0


# ---------------------------------------------------------------------------------------------
# real sweeps (each evaluation a real `python -m ftlab evaluate` process)


def orchestrate_cmd(ws: Workspace, *args: str) -> list[str]:
    return [sys.executable, "-m", "ftlab", "--workdir", str(ws.root), "orchestrate", *args]


def run_orchestrator(ws: Workspace, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(orchestrate_cmd(ws, *args), capture_output=True, text=True, env=env, timeout=timeout)


def completed(ws: Workspace, model: str) -> dict | None:
    path = ws.metrics_dir / f"{model}.json"
    if not path.exists():
        return None
    doc = read_json(path)
    return doc if doc.get("status") == "complete" else None


@pytest.mark.slow
def test_failing_model_does_not_stop_the_sweep(tmp_path, tiny_template):
    ws = Workspace(tmp_path)
    opts = canned_options(ws)
    good = ["scratch-tiny-arc_SFT_LoRa16_NoQuant", "scratch-tiny-base"]
    for n in good:
        make_model(ws, tiny_template, n)
    bad = make_model(ws, tiny_template, "scratch-tiny-arc_SFT_DoRa8_NoQuant")
    (bad / "config.json").rename(bad / "config.json.bak")
    args = ["--datasets", TASK, "--limit", "3", "--config", opts.config]

    r = run_orchestrator(ws, *args)
    assert r.returncode == 1, r.stdout + r.stderr  # exit code = number of failed models
    for n in good:
        assert completed(ws, n) is not None
    err = read_json(ws.metrics_dir / "scratch-tiny-arc_SFT_DoRa8_NoQuant.error.json")
    assert "has no config.json" in err["error"] and err["exit_code"] == 2
    assert err["time"] and err["traceback_tail"] and err["request_hash"]
    assert "FAILED  scratch-tiny-arc_SFT_DoRa8_NoQuant" in r.stdout
    assert "2 evaluated, 1 failed, 0 skipped" in r.stdout

    r = run_orchestrator(ws, *args, "--dry-run")
    assert r.returncode == 0
    plan = {ln.split()[0]: ln.split()[1:3] for ln in r.stdout.splitlines()[1:-1]}
    assert plan == {"scratch-tiny-arc_SFT_DoRa8_NoQuant": ["skip", "failed-earlier"],
                    "scratch-tiny-arc_SFT_LoRa16_NoQuant": ["skip", "up-to-date"],
                    "scratch-tiny-base": ["skip", "up-to-date"]}

    (bad / "config.json.bak").rename(bad / "config.json")
    r = run_orchestrator(ws, *args, "--retry-failed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert completed(ws, "scratch-tiny-arc_SFT_DoRa8_NoQuant") is not None
    assert not (ws.metrics_dir / "scratch-tiny-arc_SFT_DoRa8_NoQuant.error.json").exists()
    assert "1 evaluated, 0 failed, 2 skipped" in r.stdout


@pytest.mark.slow
def test_kill9_during_sweep_then_resume(tmp_path, tiny_template):
    ws = Workspace(tmp_path)
    # One model keeps the test short: the second process would only repeat the first's load time.
    models = ["scratch-tiny-arc_SFT_LoRa16_NoQuant"]
    for n in models:
        make_model(ws, tiny_template, n)
    limit = 30
    # The real hf backend on the tiny model, one sample per batch: slow enough to be killed mid-run.
    args = ["--datasets", TASK, "--limit", str(limit), "--batch-size", "1", "eval.max_new_tokens=12"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(orchestrate_cmd(ws, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    first = ws.metrics_dir / f"{models[0]}.samples.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and len(read_jsonl(first)) < 3:
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    time.sleep(1.5)
    done_before = len(read_jsonl(first))
    time.sleep(1.5)
    # The evaluation died with its orchestrator: nothing is appended any more, nothing completed.
    assert len(read_jsonl(first)) == done_before < limit
    assert completed(ws, models[0]) is None
    lock = json.loads((ws.metrics_dir / ".locks" / f"{models[0]}.lock").read_text())
    assert lock["pid"] == proc.pid  # left behind by the killed orchestrator

    r = run_orchestrator(ws, *args, "--dry-run")
    assert f"{models[0]}  run     incomplete      {TASK}: {done_before} samples done, resuming" in r.stdout

    r = run_orchestrator(ws, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    for n in models:
        doc = completed(ws, n)
        assert doc is not None and doc["datasets"][TASK]["n"] == limit
        keys = Counter((x["dataset"], x["index"]) for x in read_jsonl(ws.metrics_dir / f"{n}.samples.jsonl"))
        assert len(keys) == limit and max(keys.values()) == 1  # nothing generated twice
    # The resumed run generated only what the killed one had not finished.
    assert completed(ws, models[0])["datasets"][TASK]["generated_this_run"] == limit - done_before
    assert not list((ws.metrics_dir / ".locks").glob("*.lock"))


def test_two_orchestrators_evaluate_each_model_once(tmp_path, tiny_template):
    ws = Workspace(tmp_path)
    opts = canned_options(ws, limit=5)
    models = ["scratch-tiny-arc_SFT_LoRa16_NoQuant", "scratch-tiny-arc_SFT_DoRa8_NoQuant",
              "scratch-tiny-boolq_SFT_LoRa16_NoQuant", "scratch-tiny-base"]
    for n in models:
        make_model(ws, tiny_template, n)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = orchestrate_cmd(ws, "--datasets", TASK, "--limit", "5", "--config", opts.config)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    evaluated = [{ln.split()[1] for ln in out.splitlines() if ln.startswith("done    ")} for out, _ in outs]
    assert evaluated[0] | evaluated[1] == set(models), outs
    assert not evaluated[0] & evaluated[1], outs
    for n in models:
        assert completed(ws, n)["datasets"][TASK]["generated_this_run"] == 5
        assert len(read_jsonl(ws.metrics_dir / f"{n}.samples.jsonl")) == 5


@pytest.mark.slow
@pytest.mark.ray
def test_ray_backend_end_to_end(tmp_path, tiny_template):
    pytest.importorskip("ray", reason="the optional ray extra is not installed (uv sync --extra ray)")
    ws = Workspace(tmp_path)
    opts = canned_options(ws)
    make_model(ws, tiny_template, "scratch-tiny-base")
    bad = make_model(ws, tiny_template, "scratch-tiny-arc_SFT_DoRa8_NoQuant")
    (bad / "config.json").unlink()
    r = run_orchestrator(ws, "--backend", "ray", "--num-cpus", "1", "--max-parallel", "1",
                         "--datasets", TASK, "--limit", "3", "--config", opts.config)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "starting a local Ray with 1 CPUs" in r.stderr
    assert completed(ws, "scratch-tiny-base")["datasets"][TASK]["n"] == 3
    err = read_json(ws.metrics_dir / "scratch-tiny-arc_SFT_DoRa8_NoQuant.error.json")
    assert "has no config.json" in err["error"]
    assert "1 evaluated, 1 failed, 0 skipped" in r.stdout
    assert not list((ws.metrics_dir / ".locks").glob("*.lock"))


def test_numbered_script_dry_run(tmp_path, tiny_template):
    ws = Workspace(tmp_path)
    make_model(ws, tiny_template, "scratch-tiny-base")
    r = subprocess.run([sys.executable, str(REPO / "Testing" / "03_EvaluationOrchestrator.py"), "--dry-run",
                        "--datasets", TASK, "--limit", "2"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "FTLAB_HOME": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "scratch-tiny-base  run     missing         no metrics" in r.stdout
    assert not ws.metrics_dir.exists()  # a dry run writes nothing
