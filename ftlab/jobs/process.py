"""One job = one child process, so a crash, out-of-memory kill or hang never ends the driver.

The child gets its own thread budget (torch spawning a thread per core in every worker is what
makes parallel CPU work 10-40x slower), its own process group (a timeout or Ctrl-C kills whatever
it spawned too) and, on Linux, dies with its driver even when the driver is killed with SIGKILL,
so a resumed driver never races an orphan writing the same files.
"""

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
from typing import Mapping, Sequence

from ftlab.jobs.locks import node_name

log = logging.getLogger(__name__)

TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1
_LIVE: set[subprocess.Popen] = set()  # children still running, for kill_all on Ctrl-C
_LIVE_LOCK = threading.Lock()


def ftlab_argv(workdir: str | os.PathLike, *args: str, python: str | None = None) -> list[str]:
    """`python -m ftlab --workdir W ARGS`: every job runs a real ftlab command, as a user would."""
    return [python or sys.executable, "-m", "ftlab", "--workdir", str(workdir), *args]


@dataclass
class ProcessResult:
    ok: bool  # exit code 0 and not timed out (the caller still checks the job's output)
    returncode: int | None
    runtime_s: float
    error: str | None = None  # one line: the CLI's `error:` line, an exception line or the signal
    output_tail: list[str] = field(default_factory=list)
    host: str = ""
    timed_out: bool = False
    node: str = ""  # the Ray node it ran on (its node id); "" on the local backend


def die_with_parent_fn(parent_pid: int):
    def _die_with_parent() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return _die_with_parent


def worker_env(threads: int | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    # The package must be importable in the worker even when ftlab runs from a source checkout.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:.*)?$")


def summarize_failure(returncode: int | None, tail: Sequence[str], timed_out: bool = False,
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
        return "finished without writing its output"
    return lines[-1] if lines else f"exited with code {returncode} and no output"


def kill_group(pid: int) -> None:
    """SIGKILL to the process group a job leads (each job is its own session), or to the process
    alone when it has no group yet."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    kill_group(proc.pid)
    proc.wait()


def keep_line(tail: collections.deque, name: str, line: str) -> None:
    """One line of a job's output: into its tail (tqdm redraws with carriage returns; only the last
    state of each line is kept) and the debug log."""
    tail.append(line.rsplit("\r", 1)[-1])
    log.debug("[%s] %s", name, line)


def process_result(returncode: int | None, runtime: float, tail: Sequence[str], timed_out: bool = False,
                   timeout_s: float | None = None, error: str | None = None) -> ProcessResult:
    """A finished job's result; a failure's one line is `error` when the caller knows it, else
    read from the output (summarize_failure)."""
    ok = returncode == 0 and not timed_out
    if not ok:
        error = error or summarize_failure(returncode, tail, timed_out, timeout_s)
    return ProcessResult(ok, returncode, runtime, None if ok else error, list(tail), node_name(), timed_out)


def kill_all() -> None:
    """Kills every child still running (a driver interrupted while worker threads wait on them)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        if proc.poll() is None:
            _kill_group(proc)


def run_process(argv: Sequence[str], *, cwd: str | os.PathLike | None = None, threads: int | None = None,
                timeout_s: float | None = None, env: Mapping[str, str] | None = None,
                name: str = "job") -> ProcessResult:
    """Runs `argv` to completion, keeping the last TAIL_LINES lines of its output."""
    log.debug("running %s", " ".join(map(str, argv)))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    proc = subprocess.Popen(
        list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, errors="replace", env=worker_env(threads, env),
        cwd=str(cwd) if cwd and os.path.isdir(cwd) else None,
        preexec_fn=die_with_parent_fn(os.getpid()) if sys.platform.startswith("linux") else None,
        start_new_session=True,
    )

    def pump() -> None:
        # Drained continuously: a full pipe would block the child forever.
        assert proc.stdout is not None
        for line in proc.stdout:
            keep_line(tail, name, line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    with _LIVE_LOCK:
        _LIVE.add(proc)
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    except BaseException:
        # Ctrl-C or a Ray cancel: never leave the job running without its owner.
        _kill_group(proc)
        raise
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    reader.join(timeout=10)
    return process_result(proc.returncode, time.monotonic() - start, list(tail), timed_out, timeout_s)
