"""One model's evaluation in its own process, so a crash, OOM kill or hang never ends the sweep."""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


@dataclass
class EvalJob:
    """Everything a worker needs; plain data so it pickles to a Ray worker."""

    model: str
    folder: str
    workdir: str
    eval_args: list[str]
    expected: dict  # task key -> the settings the evaluation must leave a current result for
    threads: int | None = None
    timeout_s: float | None = None
    python: str = sys.executable
    # The driver's working directory, so relative paths in the config (eval.source_dir, a
    # responses file) mean the same in the worker as in the planner that hashed them.
    cwd: str | None = None

    @property
    def request_hash(self) -> str:
        from ftlab.eval.results import request_hash

        return request_hash(self.expected)

    def command(self) -> list[str]:
        return [self.python, "-m", "ftlab", "--workdir", self.workdir, "evaluate", self.folder, *self.eval_args]


@dataclass
class JobResult:
    model: str
    ok: bool
    returncode: int | None
    runtime_s: float
    error: str | None = None
    output_tail: list[str] = field(default_factory=list)
    host: str = ""


def _die_with_parent_fn(parent_pid: int):
    def _die_with_parent() -> None:
        # Linux: the kernel SIGKILLs the evaluation when its orchestrator dies (even by kill -9),
        # so a resumed sweep never races an orphan appending to the same samples file.
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return _die_with_parent


def worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        # One thread budget per worker: torch spawning a thread per core in every worker is what
        # makes parallel CPU evaluation 10-40x slower.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    # The package must be importable in the worker even when ftlab runs from a source checkout.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:.*)?$")


def summarize_failure(returncode: int | None, tail: list[str], timed_out: bool = False,
                      timeout_s: float | None = None) -> str:
    """One line: the CLI's `error: ...`, else the exception line of a traceback, else the signal."""
    if timed_out:
        return f"timed out after {timeout_s:g} s and was killed"
    lines = [ln.strip() for ln in tail if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln[len("error:"):].strip()
    for ln in reversed(lines):
        if _EXC_LINE.match(ln):
            return ln
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -returncode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    if returncode == 0:
        return "finished without writing complete metrics"
    return lines[-1] if lines else f"exited with code {returncode} and no output"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def run_job(job: EvalJob) -> JobResult:
    """Runs `ftlab evaluate` for one model and reports success only if complete metrics exist."""
    import socket

    cmd = job.command()
    log.debug("running %s", " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        errors="replace", env=worker_env(job.threads),
        cwd=job.cwd if job.cwd and os.path.isdir(job.cwd) else job.workdir,
        preexec_fn=_die_with_parent_fn(os.getpid()) if sys.platform.startswith("linux") else None,
        # Its own process group, so a timeout or Ctrl-C kills whatever the evaluation spawned
        # too; a surviving grandchild would keep the output pipe open and the sweep waiting.
        start_new_session=True,
    )

    def pump() -> None:
        # Drained continuously: a full pipe would block the child forever.
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            # tqdm redraws with carriage returns; keep only the last state of each line.
            tail.append(line.rsplit("\r", 1)[-1])
            log.debug("[%s] %s", job.model, line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=job.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    except BaseException:
        # Ctrl-C or a Ray cancel: never leave the evaluation running without its owner.
        _kill_group(proc)
        raise
    reader.join(timeout=10)
    runtime = time.monotonic() - start
    ok = proc.returncode == 0 and not timed_out and metrics_complete(job)
    error = None if ok else summarize_failure(proc.returncode, list(tail), timed_out, job.timeout_s)
    return JobResult(job.model, ok, proc.returncode, runtime, error, list(tail), socket.gethostname())


def metrics_complete(job: EvalJob) -> bool:
    """The worker finished its run and every requested task now has a current result."""
    from ftlab.eval.documents import load_metrics_document
    from ftlab.eval.evaluator import metrics_paths
    from ftlab.eval.results import stale_tasks
    from ftlab.paths import Workspace

    json_path, _ = metrics_paths(Workspace(Path(job.workdir)), job.model)
    try:
        doc = load_metrics_document(json_path, missing_ok=True)
    except Exception:
        return False
    return doc is not None and doc.get("status", "complete") == "complete" and not stale_tasks(doc, job.expected)
