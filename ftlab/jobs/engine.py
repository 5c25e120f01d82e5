"""The job engine: a graph of jobs, each judged by its output, run in dependency order by a backend.

Like a build system, the engine keeps no state of its own that decides what to run: a job is done
when its kind finds its output complete (a published model folder, a current metrics file), so a
driver killed at any moment is resumed by running it again. What it does keep, in the ledger, is
each job's last outcome (runtime, error), for the plan, the ETA and the report.

A backend (ftlab.jobs.backends) fills free slots with `engine.next_ready(...)`, runs each returned
`Task` in a child process and hands the result to `engine.finish(...)`, or, when the attempt was
lost to the system (its node died, its worker was killed) rather than failing on its own, to
`engine.lost(...)`, which says whether to run it again (up to `retries` more attempts, each in
the journal with its reason; the job keeps its lock in between, so no other driver takes it). Claiming a job takes its
lock file (ftlab.jobs.locks) and re-checks its output under the lock, so two drivers on the same
workspace never run a job twice: the second one sees the lock, waits, and then finds it done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from tqdm.auto import tqdm

from ftlab.env import now_iso
from ftlab.errors import FtlabError
from ftlab.io import append_jsonl, atomic_write_json, read_json
from ftlab.jobs.locks import JOB_ENV, JobLock, heartbeat_s, is_locked_by_other, node_name
from ftlab.jobs.process import ProcessResult, ftlab_argv
from ftlab.paths import Workspace
from ftlab.registry import Registry

log = logging.getLogger(__name__)

# What a job's kind says about its output (SKIP: do not run it, e.g. it failed before and the
# driver does not retry failures, or its input is not a usable model folder).
DONE, TODO, STALE, SKIP = "done", "to run", "stale", "skip"
# What the engine adds: failed now, skipped because a dependency failed, run by another driver.
FAILED, BLOCKED, BUSY, FAILED_EARLIER = "failed", "blocked", "busy", "failed earlier"
RUNS = (TODO, STALE)
POLL_S = 2.0  # how often a driver waiting on another driver's job looks again


@dataclass(frozen=True)
class Resources:
    """What one job reserves where it runs. A backend never starts a job on a node (or machine)
    that cannot hold all of it, and refuses up front a job no node could ever hold."""

    cpus: int | None = None  # CPUs reserved, also its torch threads; None = the run's --threads budget
    gpus: float = 0.0
    memory_gb: float = 0.0  # memory reserved on its node (0 = none declared)
    custom: tuple[tuple[str, float], ...] = ()  # custom Ray resources, e.g. (("big_gpu", 1.0),)

    def needs(self, threads: int) -> dict[str, float]:
        """As Ray names resources (memory in bytes), without the zero ones."""
        out = {"CPU": float(self.cpus or threads), "GPU": float(self.gpus),
               "memory": self.memory_gb * 2 ** 30, **dict(self.custom)}
        return {k: v for k, v in out.items() if v}

    def describe(self, threads: int | str) -> str:
        parts = [f"{self.cpus or threads} CPU(s)"]
        if self.gpus:
            parts.append(f"{self.gpus:g} GPU(s)")
        if self.memory_gb:
            parts.append(f"{self.memory_gb:g} GB memory")
        parts += [f"{v:g} {k}" for k, v in self.custom]
        return ", ".join(parts)


@dataclass
class Job:
    """One unit of work. `id` is a hash of its resolved settings and its inputs' ids, so an
    unchanged job keeps its id (and its output) and a changed one gets a new id and output."""

    id: str
    kind: str  # key in JOB_KINDS
    name: str  # its output's name (model folder, metrics file); unique per kind in a graph
    deps: tuple[str, ...] = ()
    data: dict = field(default_factory=dict)  # what the kind needs to build the command
    resources: Resources = field(default_factory=Resources)
    info: dict = field(default_factory=dict)  # shown in plans and reports (recipe, seed, ...)

    @property
    def label(self) -> str:
        return self.info.get("label") or f"{self.kind} {self.name}"


def job_id(kind: str, payload: dict, inputs: Sequence[str]) -> str:
    """A job's identity: a hash of its kind, its resolved settings and its inputs' identities."""

    blob = json.dumps({"kind": kind, "payload": payload, "deps": sorted(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Status:
    state: str  # DONE, TODO, STALE or SKIP
    why: str


class JobKind(Protocol):
    """How one kind of job is run and judged; registered in JOB_KINDS by name."""

    name: str

    def status(self, job: Job, workspace: Workspace) -> Status:
        """DONE when the output is complete and current; TODO/STALE with the reason otherwise."""

    def command(self, job: Job, workspace: Workspace) -> list[str]:
        """The ftlab subcommand and its arguments (`["train", "--config", ...]`)."""

    def lock_path(self, job: Job, workspace: Workspace) -> Path:
        """The lock every driver takes before running this job's output (shared across studies
        and with the evaluation orchestrator for the same output)."""

    def finished(self, job: Job, workspace: Workspace, result: ProcessResult, ok: bool) -> str:
        """Called once the job's process ended and its output was judged (`ok`): records what the
        kind keeps beside its output (an error report) and returns a note for the `done` line."""


JOB_KINDS: Registry[JobKind] = Registry("job kind")


@dataclass
class Task:
    """A claimed job, as plain data a backend can ship to another process or a Ray worker."""

    job_id: str
    name: str
    argv: list[str]
    cwd: str
    threads: int | None
    timeout_s: float | None
    env: dict = field(default_factory=dict)
    gpus: float = 0.0
    attempt: int = 1  # 2, 3, ... when the earlier attempts were lost to system failures


@dataclass
class Outcome:
    job: Job
    state: str  # DONE (ran now or found done), FAILED, BLOCKED, FAILED_EARLIER
    detail: str = ""
    runtime_s: float = math.nan
    ran: bool = False


@dataclass
class PlanRow:
    job: Job
    state: str
    why: str


@dataclass
class EngineSettings:
    workers: int | None = None  # jobs at once; None = 1 locally, what the cluster fits on Ray
    threads: int | None = None  # torch threads per job; None = cores // workers
    timeout_s: float | None = None
    retry_failed: bool = True  # a job that failed in an earlier run is tried again
    # Attempts lost to the system (node died, worker killed) run again, at most this many times;
    # a job that fails on its own (an error, exit 2) never does.
    retries: int = 2
    backend: str = "local"
    ray_address: str | None = None
    cwd: str | None = None  # the driver's folder, so relative paths mean the same in every job
    # A job another driver is running: wait for it (its dependants need it) or skip it.
    wait_for_busy: bool = True

    def validate(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise FtlabError(f"--workers {self.workers} must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise FtlabError(f"--threads {self.threads} must be >= 1")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise FtlabError(f"--timeout {self.timeout_s} must be positive seconds")
        if self.retries < 0:
            raise FtlabError(f"--retries {self.retries} must be >= 0")
        heartbeat_s()  # a malformed FTLAB_LOCK_HEARTBEAT_S fails here, not mid-run

    def threads_per_job(self) -> int:
        """--threads, else the driver's OMP_NUM_THREADS (a budget the user already set), else the
        cores shared among the workers."""
        env = os.environ.get("OMP_NUM_THREADS", "")
        if self.threads:
            return self.threads
        if env.isdigit() and int(env) > 0:
            return int(env)
        return max(1, (os.cpu_count() or 1) // (self.workers or 1))


def topological(jobs: Sequence[Job]) -> list[Job]:
    """Jobs with every dependency before its dependants, otherwise in the given order."""
    by_id = {j.id: j for j in jobs}
    missing = sorted({d for j in jobs for d in j.deps if d not in by_id})
    if missing:
        raise FtlabError(f"job graph refers to unknown jobs {', '.join(missing)}")
    out: list[Job] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = placed

    def visit(job: Job) -> None:
        if state.get(job.id) == 2:
            return
        if state.get(job.id) == 1:
            raise FtlabError(f"job graph has a cycle through {job.label}")
        state[job.id] = 1
        for dep in job.deps:
            visit(by_id[dep])
        state[job.id] = 2
        out.append(job)

    for job in jobs:
        visit(job)
    return out


class Ledger:
    """Each job's last outcome, one small JSON file per job id (shared by every study), and a
    journal of every start and finish (one appended line each), the audit trail that shows a job
    ran to completion exactly once however often its drivers were killed and rerun."""

    def __init__(self, folder: Path):
        self.folder = folder

    @property
    def journal(self) -> Path:
        return self.folder / "journal.jsonl"

    def log(self, event: str, job: Job, **extra) -> None:
        append_jsonl(self.journal, {"event": event, "id": job.id, "kind": job.kind, "name": job.name,
                                    "pid": os.getpid(), "host": node_name(), "time": now_iso("milliseconds"), **extra})

    def path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def read(self, job_id: str) -> dict | None:
        path = self.path(job_id)
        if not path.exists():
            return None
        try:
            record = read_json(path, "job record")
        except FtlabError:
            return None
        return record if isinstance(record, dict) else None

    def write(self, job: Job, state: str, result: ProcessResult | None, argv: list[str] | None,
              lost: Sequence[dict] = ()) -> None:
        atomic_write_json(self.path(job.id), {
            "id": job.id, "kind": job.kind, "name": job.name, "state": state,
            "error": result.error if result else None,
            "runtime_s": round(result.runtime_s, 3) if result else None,
            "output_tail": result.output_tail[-20:] if result and state == FAILED else [],
            "host": (result.host if result else "") or node_name(),
            "node": result.node if result else "",
            # The attempts before this one that the system lost (engine.lost), each with its reason.
            "attempts": len(lost) + 1, "lost_attempts": list(lost),
            "command": argv, "finished_at": now_iso(), "info": job.info,
        })

    def runtime(self, job_id: str) -> float | None:
        record = self.read(job_id)
        value = (record or {}).get("runtime_s")
        return float(value) if isinstance(value, (int, float)) and (record or {}).get("state") == DONE else None


class Engine:
    """Plans and runs one graph. Backends use `next_ready`, `finish`, `has_work` and `waiting`."""

    def __init__(self, jobs: Sequence[Job], workspace: Workspace, ledger_dir: Path,
                 settings: EngineSettings | None = None, echo: Callable[[str], None] | None = None,
                 on_done: Callable[[Job], None] | None = None):
        self.settings = settings or EngineSettings()
        self.settings.validate()
        self.workspace = workspace
        self.jobs = topological(jobs)
        self.by_id = {j.id: j for j in self.jobs}
        self.ledger = Ledger(ledger_dir)
        self._echo = echo
        self._on_done = on_done  # told of each job this driver finished (experiment tracking); never fails it
        self._bar = None
        self.outcomes: dict[str, Outcome] = {}
        self._claimed: dict[str, tuple[JobLock, float]] = {}
        self._lost: dict[str, list[dict]] = {}  # job id -> its attempts lost to the system, this run
        self._busy_until: dict[str, float] = {}
        self._to_run: set[str] = set()
        self._estimates: dict[str, float] = {}

    # -- planning --------------------------------------------------------------------------

    def status(self, job: Job) -> Status:
        return JOB_KINDS.get(job.kind).status(job, self.workspace)

    def plan(self) -> list[PlanRow]:
        """Every job with what a run would do now: done, to run, stale (why), failed earlier, busy."""
        rows = []
        for job in self.jobs:
            st = self.status(job)
            state, why = st.state, st.why
            if state in RUNS:
                record = self.ledger.read(job.id)
                if record and record.get("state") == FAILED:
                    line = str(record.get("error") or "unknown error")[:160]
                    if self.settings.retry_failed:
                        why = f"{why}; failed last time ({line}), retrying"
                    else:
                        state, why = FAILED_EARLIER, f"{line} (rerun without --skip-failed to retry)"
                owner = is_locked_by_other(JOB_KINDS.get(job.kind).lock_path(job, self.workspace))
                if owner is not None:
                    state, why = BUSY, f"{why}; now being run by {owner.describe()}"
            rows.append(PlanRow(job, state, why))
        return rows

    # -- the protocol backends use ---------------------------------------------------------

    def has_work(self) -> bool:
        """Some job is neither finished, failed nor blocked (it may be running or waiting)."""
        return any(j.id not in self.outcomes for j in self.jobs)

    def waiting(self) -> bool:
        """Only jobs another driver is running (or that wait on them) remain: poll again later."""
        return bool(self._busy_until) and not self._claimed

    def _deps_state(self, job: Job) -> str:
        states = [self.outcomes.get(d) for d in job.deps]
        if any(o is not None and o.state != DONE for o in states):
            return BLOCKED
        return DONE if all(o is not None for o in states) else TODO

    def _block(self, job: Job, why: str) -> None:
        """Marks `job` and everything that needs it as skipped."""
        for other in self.jobs:
            if other.id in self.outcomes or other.id in self._claimed:
                continue
            if other.id == job.id or self._needs(other, job.id):
                self._record(Outcome(other, BLOCKED, why))

    def _needs(self, job: Job, dep_id: str) -> bool:
        return any(d == dep_id or self._needs(self.by_id[d], dep_id) for d in job.deps)

    def next_ready(self, fits: Callable[[Job], bool] = lambda job: True) -> tuple[Job, Task] | None:
        """Claims the first job (in plan order) whose dependencies are done and that `fits` the
        backend's free resources; jobs found done meanwhile are recorded, not returned."""
        now = time.monotonic()
        for job in self.jobs:
            if job.id in self.outcomes or job.id in self._claimed:
                continue
            if self._busy_until.get(job.id, 0.0) > now:
                continue
            deps = self._deps_state(job)
            if deps == BLOCKED:
                failed = next(self.by_id[d] for d in job.deps if self.outcomes.get(d) and self.outcomes[d].state != DONE)
                self._block(job, f"needs {failed.label}, which did not finish")
                continue
            if deps != DONE or not fits(job):
                continue
            claimed = self._claim(job)
            if claimed is not None:
                return job, claimed
        return None

    def _claim(self, job: Job) -> Task | None:
        kind = JOB_KINDS.get(job.kind)
        lock = JobLock(kind.lock_path(job, self.workspace))
        if not lock.acquire():
            owner = lock.owner()
            who = owner.describe() if owner else "another driver"
            if not self.settings.wait_for_busy:
                self._record(Outcome(job, BUSY, f"locked by {who}"))
                self._block(job, f"needs {job.label}, which another driver is running")
                return None
            # Another driver runs it: look again later; it will most likely be done then.
            if job.id not in self._busy_until:
                self._write(f"wait    {job.label}  (being run by {who})")
            self._busy_until[job.id] = time.monotonic() + POLL_S
            return None
        self._busy_until.pop(job.id, None)
        try:
            st = kind.status(job, self.workspace)  # re-checked under the lock
            if st.state in (DONE, SKIP):
                lock.release()
                self._record(Outcome(job, st.state, f"{st.why} (meanwhile)" if st.state == DONE else st.why))
                if st.state == SKIP:
                    self._block(job, f"needs {job.label}, which is skipped")
                return None
            record = self.ledger.read(job.id)
            if record and record.get("state") == FAILED and not self.settings.retry_failed:
                lock.release()
                self._record(Outcome(job, FAILED_EARLIER, str(record.get("error"))[:160]))
                self._block(job, f"needs {job.label}, which failed earlier")
                return None
            argv = ftlab_argv(self.workspace.root, *kind.command(job, self.workspace))
        except BaseException:
            lock.release()
            raise
        self._claimed[job.id] = (lock, time.monotonic())
        self.ledger.log("start", job, attempt=1)
        self._write(f"start   {job.label}  ({st.why})")
        # FTLAB_JOB: the job's process records it in its output claim, so a retry of this job takes
        # over the claim an attempt lost with its node left behind (ftlab.jobs.locks).
        return Task(job.id, job.name, argv, self.settings.cwd or os.getcwd(), self.threads_for(job),
                    self.settings.timeout_s, env={JOB_ENV: job.id}, gpus=job.resources.gpus)

    def threads_for(self, job: Job) -> int:
        """The job's torch threads (= the CPUs it reserves): its declared CPUs, else --threads' budget."""
        return job.resources.cpus or self.settings.threads_per_job()

    def lost(self, task: Task, result: ProcessResult, unplaceable: str | None = None) -> bool:
        """An attempt the system lost (its node died, its worker was killed): True when the backend
        should run `task` again (its `attempt` advanced; the job keeps its lock), False when the
        retries are spent or `unplaceable` says why no live node can hold it now (then the job is
        finished as failed, rather than waiting for a node that may never come back)."""
        job = self.by_id[task.job_id]
        self.ledger.log("lost", job, attempt=task.attempt, error=result.error, node=result.node)
        if task.attempt > self.settings.retries or unplaceable:
            # The job's record is this last attempt; `lost_attempts` lists the ones retried before it.
            result.error = (f"lost to a system failure ({result.error}), and {unplaceable}; run it again once "
                            "such a node is back" if unplaceable else
                            f"lost {task.attempt} time(s) to system failures, the last: {result.error} "
                            f"(raise --retries to try more)")
            self.finish(task, result)
            return False
        self._lost.setdefault(job.id, []).append(
            {"attempt": task.attempt, "error": result.error, "node": result.node, "host": result.host,
             "runtime_s": round(result.runtime_s, 3), "time": now_iso()})
        task.attempt += 1
        self._claimed[job.id] = (self._claimed[job.id][0], time.monotonic())
        self.ledger.log("start", job, attempt=task.attempt)
        self._write(f"retry   {job.label}  (attempt {task.attempt} of {self.settings.retries + 1}: "
                    f"the last was lost: {result.error})")
        return True

    def finish(self, task: Task, result: ProcessResult) -> None:
        job = self.by_id[task.job_id]
        lock, _ = self._claimed.pop(job.id)
        lost = self._lost.pop(job.id, [])
        try:
            if result.ok:
                st = self.status(job)
                if st.state != DONE:
                    result.ok = False
                    result.error = f"finished without writing its output ({st.why})"
            state = DONE if result.ok else FAILED
            note = JOB_KINDS.get(job.kind).finished(job, self.workspace, result, result.ok)
            self.ledger.write(job, state, result, task.argv, lost)
            self.ledger.log(state, job, runtime_s=round(result.runtime_s, 3), error=result.error,
                            attempt=task.attempt, node=result.node)
        finally:
            lock.release()
        self._record(Outcome(job, state, (result.error or "") if state == FAILED else note, result.runtime_s,
                             ran=True))
        if state == FAILED:
            self._block(job, f"needs {job.label}, which failed")
        elif self._on_done is not None:
            try:
                self._on_done(job)
            except Exception as exc:  # the job is done and recorded whatever its listener does
                log.warning(f"after {job.label}: {type(exc).__name__}: {exc}")

    def refuse_unrunnable(self, check: Callable[[Job], str | None]) -> None:
        """Fails up front the jobs this backend can never run (`check` gives the reason), so a
        driver never waits forever for resources that do not exist."""
        for job in self.jobs:
            if job.id in self.outcomes:
                continue
            why = check(job)
            if why:
                self._record(Outcome(job, FAILED, why))
                self._block(job, f"needs {job.label}, which cannot run here")

    def heartbeat(self) -> None:
        """Refreshes the locks of running jobs, so drivers on other machines see this one alive
        (backends call it at least every POLL_S seconds)."""
        now, every = time.monotonic(), heartbeat_s()
        for job_id, (lock, last) in list(self._claimed.items()):
            if now - last >= every:
                lock.touch()
                self._claimed[job_id] = (lock, now)

    def release_all(self) -> None:
        for lock, _ in self._claimed.values():
            lock.release()
        self._claimed.clear()

    # -- output ----------------------------------------------------------------------------

    def _write(self, line: str) -> None:
        if self._echo is not None:
            self._echo(line)
        elif self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def _record(self, outcome: Outcome) -> None:
        if outcome.job.id in self.outcomes:
            return
        self.outcomes[outcome.job.id] = outcome
        job = outcome.job
        if outcome.ran and outcome.state == DONE:
            self._write(f"done    {job.label}  ({outcome.runtime_s:.1f} s)" + (f"  {outcome.detail}" if outcome.detail else ""))
        elif outcome.ran:
            self._write(f"FAILED  {job.label}  ({outcome.runtime_s:.1f} s): {outcome.detail}")
        elif outcome.state == FAILED:
            self._write(f"FAILED  {job.label}: {outcome.detail}")
        elif outcome.state == BLOCKED:
            self._write(f"skip    {job.label}  ({outcome.detail})")
        elif outcome.state == FAILED_EARLIER:
            self._write(f"skip    {job.label}  (failed earlier: {outcome.detail})")
        elif outcome.state in (SKIP, BUSY) or job.id in self._to_run:
            self._write(f"skip    {job.label}  ({outcome.state}: {outcome.detail})")
        if self._bar is not None and (outcome.ran or outcome.job.id in self._to_run):
            self._bar.update(self._weight(job))

    def _weight(self, job: Job) -> float:
        """Seconds a job is expected to take: its last successful runtime, else its kind's mean."""
        return self._estimates.get(job.id, 1.0)

    def _estimate(self, rows: list[PlanRow]) -> dict[str, float]:
        known: dict[str, list[float]] = {}
        per_job: dict[str, float] = {}
        for row in rows:
            rt = self.ledger.runtime(row.job.id)
            if rt is not None:
                per_job[row.job.id] = rt
                known.setdefault(row.job.kind, []).append(rt)
        means = {k: sum(v) / len(v) for k, v in known.items()}
        fallback = sum(means.values()) / len(means) if means else 1.0
        return {row.job.id: per_job.get(row.job.id, means.get(row.job.kind, fallback)) for row in rows}

    # -- the whole run ---------------------------------------------------------------------

    def run(self, backend: Callable[["Engine"], None]) -> list[Outcome]:
        """Runs every job that needs it through `backend` (ftlab.jobs.backends.run_engine passes the
        one the settings name); returns all outcomes."""

        rows = self.plan()
        self._to_run = {r.job.id for r in rows if r.state not in (DONE, SKIP)}
        for row in rows:
            if row.state == DONE:
                self.outcomes[row.job.id] = Outcome(row.job, DONE, row.why)
            elif row.state == SKIP:
                self._record(Outcome(row.job, SKIP, row.why))
                self._block(row.job, f"needs {row.job.label}, which is skipped")
        self._estimates = self._estimate(rows)
        total = sum(self._estimates[j] for j in self._to_run)
        # The bar counts expected seconds, so its ETA weighs a training job above an evaluation.
        self._bar = tqdm(total=round(total, 1), desc="jobs", unit="s", file=sys.stderr, dynamic_ncols=True,
                         disable=None if self._to_run else True,
                         bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]")
        try:
            if self._to_run:
                backend(self)
        finally:
            self.release_all()
            self._bar.close()
            self._bar = None
        return [self.outcomes[j.id] for j in self.jobs if j.id in self.outcomes]
