"""Local job processes forked from one that has already imported torch and transformers.

Every job is an `ftlab ...` command in a process of its own, and each used to start a fresh Python
that imported torch and transformers again: 9 s per job on a 2-core CPU, 17 s where Python may not
write bytecode (measured with `python -X importtime -m ftlab evaluate ...`). A study or sweep of
many short jobs paid that for every one (the demo: 10 jobs, benchmarks/demo.md). The zygote
imports them once; each job is a `fork()` of it that runs `ftlab.cli.main(args)` and exits.

What a job keeps from running as its own process: its own pid and session (a timeout or Ctrl-C
kills its whole group), its own environment, working directory and thread budget, its output in
its own file (tailed by the driver as before), its exit status (signals as negative codes, like
`subprocess`), and death with its driver: the zygote dies with the driver (PR_SET_PDEATHSIG) and
each job with the zygote.

Used only where a fork is equivalent to a fresh start: Linux, no GPU on the machine (CUDA state and
CUDA_VISIBLE_DEVICES are fixed at CUDA's first use, which must not happen in a shared parent), and a
job whose environment equals the zygote's apart from its thread counts (variables read at import
time have the values the job would have seen). Otherwise the job is a fresh process, as before.

Protocol, one JSON document per line: the driver sends {"id", "args", "env", "cwd", "log"}; the
zygote answers {"id", "pid"} right after each fork, then {"pid", "status"} when that job ends (its
one thread writes them in that order).
"""

from __future__ import annotations

import atexit
import collections
import io
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Mapping, Sequence

from ftlab import cli
from ftlab.console import quiet_libraries
from ftlab.jobs.locks import JOB_ENV
from ftlab.jobs.process import (
    TAIL_LINES,
    ProcessResult,
    die_with_parent_fn,
    keep_line,
    kill_group,
    process_result,
    worker_env,
)

log = logging.getLogger(__name__)

# What nearly every job imports (measured with -X importtime on an evaluation job: torch and
# transformers' model-loading modules are 13.5 of its 15.7 s of imports without bytecode).
PRELOAD = ("torch", "transformers", "transformers.modeling_utils", "transformers.modeling_layers",
           "transformers.generation", "peft")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Per-job variables nothing reads at import time (the job's id for its output claim): the forked
# job gets them like the others, and a job differing only in them still qualifies.
PER_JOB_VARS = (*THREAD_VARS, JOB_ENV)
READY_TIMEOUT_S = 600.0


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def ftlab_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after `python -m ftlab`, or None when argv is another program."""
    argv = [str(a) for a in argv]
    if len(argv) >= 3 and argv[1:3] == ["-m", "ftlab"] and os.path.realpath(argv[0]) == os.path.realpath(sys.executable):
        return argv[3:]
    return None


def _without_threads(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in PER_JOB_VARS}


class _Pending:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.error: str | None = None
        self.status: int | None = None
        self.started = threading.Event()
        self.done = threading.Event()


class Zygote:
    """The driver's side: starts the zygote on first use, sends it jobs, waits for them."""

    def __init__(self, env: Mapping[str, str]):
        self.env = dict(env)  # the environment the zygote imports under (worker_env of the driver's)
        self._proc: subprocess.Popen | None = None
        self._failed = False
        self._lock = threading.Lock()
        self._next_id = 0
        self._by_id: dict[int, _Pending] = {}
        self._by_pid: dict[int, _Pending] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self._failed:
            return False
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ftlab.jobs.zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                # One thread in the zygote itself: OpenMP's pool must not exist before a fork (a
                # forked child cannot use its parent's pool); each job sets its own count.
                stderr=subprocess.DEVNULL, env={**self.env, **{v: "1" for v in THREAD_VARS}},
                preexec_fn=die_with_parent_fn(os.getpid()),
                start_new_session=True)
        except OSError as exc:
            log.debug("job zygote did not start (%s); jobs start as fresh processes", exc)
            self._failed = True
            return False
        ready = _read_line(proc, READY_TIMEOUT_S)
        if not ready or not json.loads(ready).get("ready"):
            log.debug("job zygote not ready (%r); jobs start as fresh processes", ready)
            proc.kill()
            proc.wait()
            self._failed = True
            return False
        self._proc = proc
        threading.Thread(target=self._read, name="ftlab-zygote-reader", daemon=True).start()
        return True

    def close(self) -> None:
        """Ends the zygote (its stdin closes; it exits once idle). Jobs still running are killed."""
        self.kill_all()
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    def kill_all(self) -> None:
        with self._lock:
            pids = [p.pid for p in self._by_pid.values() if not p.done.is_set()]
        for pid in pids:
            kill_group(pid)

    # -- the protocol ------------------------------------------------------------------------

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for raw in proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                if "id" in msg:
                    pending = self._by_id.pop(msg["id"], None)
                    if pending is None:
                        continue
                    if "pid" in msg:
                        pending.pid = msg["pid"]
                        self._by_pid[pending.pid] = pending
                    else:
                        pending.error = msg.get("error", "the job zygote could not fork")
                        pending.done.set()
                    pending.started.set()
                elif "pid" in msg:
                    pending = self._by_pid.pop(msg["pid"], None)
                    if pending is not None:  # else its driver thread already gave up on it
                        pending.status = msg["status"]
                        pending.done.set()
        # The zygote is gone; so are its jobs (each dies with it).
        with self._lock:
            left = list(self._by_id.values()) + list(self._by_pid.values())
            self._by_id.clear()
            self._by_pid.clear()
        for pending in left:
            if pending.status is None:
                pending.status = -signal.SIGKILL
                pending.error = pending.error or "the job zygote died"
            pending.started.set()
            pending.done.set()

    def run(self, argv: Sequence[str], *, cwd: str | os.PathLike | None, threads: int | None,
            timeout_s: float | None, env: Mapping[str, str] | None, name: str):
        """Runs the job forked from the zygote and returns its ProcessResult, or None when this job
        must start as a fresh process instead (see the module docstring)."""
        args = ftlab_args(argv)
        job_env = worker_env(threads, env)
        if args is None or _without_threads(job_env) != _without_threads(self.env):
            return None
        start = time.monotonic()  # the first job's time includes starting the zygote, as a fresh process's imports
        with self._lock:
            if not self._start():
                return None
            self._next_id += 1
            pending, req_id = _Pending(), self._next_id
            self._by_id[req_id] = pending
        fd, log_path = tempfile.mkstemp(prefix="ftlab-job-", suffix=".log")
        os.close(fd)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        timed_out = False
        request = {"id": req_id, "args": args, "env": job_env, "log": log_path,
                   "cwd": str(cwd) if cwd and os.path.isdir(cwd) else None}
        try:
            with self._lock:
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                self._proc.stdin.flush()
            pending.started.wait()
            if pending.pid is None:
                return ProcessResult(False, None, time.monotonic() - start, pending.error or "could not start the job")
            with open(log_path, encoding="utf-8", errors="replace") as out:
                partial = ""
                while True:
                    finished = pending.done.wait(0.2)
                    chunk = out.read()
                    if chunk:
                        lines = (partial + chunk).split("\n")
                        partial = lines.pop()
                        for line in lines:
                            keep_line(tail, name, line)
                    if finished:
                        break
                    if timeout_s is not None and time.monotonic() - start > timeout_s and not timed_out:
                        timed_out = True
                        kill_group(pending.pid)
                if partial:
                    keep_line(tail, name, partial)
        except BaseException:
            # Ctrl-C or a cancel: never leave the job running without its owner.
            if pending.pid is not None:
                kill_group(pending.pid)
            raise
        finally:
            with self._lock:
                self._by_id.pop(req_id, None)
                if pending.pid is not None:
                    self._by_pid.pop(pending.pid, None)
            Path(log_path).unlink(missing_ok=True)
        # pending.error is set only when the zygote died under the job: a truer line than the
        # SIGKILL it reports as the job's status.
        return process_result(pending.status, time.monotonic() - start, list(tail), timed_out, timeout_s,
                              error=None if timed_out else pending.error)


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str | None:
    """One line from the zygote's stdout, or None after timeout_s or at its exit."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline().decode()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0] if result and result[0] else None


# -- the zygote's side ---------------------------------------------------------------------------

def _send(msg: dict) -> None:
    os.write(1, (json.dumps(msg) + "\n").encode())


def _child(req: dict, zygote_pid: int) -> None:
    """In the forked job: becomes a fresh-looking `python -m ftlab ARGS` and never returns."""
    rc = 1
    try:
        os.setsid()
        die_with_parent_fn(zygote_pid)()
        out = os.open(req["log"], os.O_WRONLY | os.O_APPEND)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)

        # Fresh, unbuffered streams over the job's own file (PYTHONUNBUFFERED as for a fresh process).
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True, line_buffering=True,
                                      errors="backslashreplace")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, line_buffering=True,
                                      errors="backslashreplace")
        os.environ.clear()
        os.environ.update(req["env"])
        if req.get("cwd"):
            os.chdir(req["cwd"])
        import torch  # lazy: torch takes 3.3 s to import

        # The job's budget, which a fresh process reads from OMP_NUM_THREADS when OpenMP starts (the
        # zygote started it with 1): worker_env put the job's --threads there.
        env_threads = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(env_threads) if env_threads.isdigit() else os.cpu_count() or 1)
        sys.argv = ["ftlab", *req["args"]]
        rc = cli.main(list(req["args"]))
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception of a fresh process

        traceback.print_exc()
        rc = 1
    finally:
        # What a normal interpreter exit runs: atexit handlers (logging's flush, temp folders'
        # finalizers), then the streams' flush.

        try:
            atexit._run_exitfuncs()
        except Exception:  # noqa: BLE001
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
    os._exit(rc if isinstance(rc, int) and 0 <= rc < 256 else 1)


def main() -> None:
    """The zygote: imports PRELOAD quietly, then forks one job per request until stdin closes."""


    quiet_libraries()
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a job imports what it needs itself
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # never fork a CUDA context
        _send({"ready": False})
        return
    _send({"ready": True, "pid": os.getpid()})
    me = os.getpid()
    buf = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.2)
        while True:  # report every job that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _send({"pid": pid, "status": os.waitstatus_to_exitcode(status)})
        if not readable:
            continue
        data = os.read(0, 1 << 16)
        if not data:
            return  # the driver closed the pipe (or died)
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            try:
                pid = os.fork()
            except OSError as exc:
                _send({"id": req["id"], "error": f"could not fork the job: {exc}"})
                continue
            if pid == 0:
                _child(req, me)
            _send({"id": req["id"], "pid": pid})


if __name__ == "__main__":
    main()
