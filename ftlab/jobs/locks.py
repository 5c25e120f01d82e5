"""Lock files so concurrent drivers (orchestrators, study runs) never run the same job twice.

A lock is a file created with O_CREAT|O_EXCL (atomic on local filesystems and NFSv3+) holding the
owner's PID, host and process start time. A lock whose owner is dead on this host is taken over.
A lock from another host cannot be checked that way (its PID means nothing here), so its owner
keeps it alive with a heartbeat (`touch`, which a running driver calls at least every
HEARTBEAT_S seconds); one whose file has not been touched for REMOTE_STALE_S belongs to a driver on
a machine that died or lost the shared storage, and is taken over too.

Taking over is the only step that deletes someone else's file, so it is serialised by an flock on
a guard file: without it two drivers could both judge the same stale lock dead, and the
slower one would delete the lock the faster one had just created. flock is released by the kernel
when its holder dies, so the guard itself can never go stale.

A job's own process (`ftlab train` run by a driver) claims its output folder with a lock that also
names the job (FTLAB_JOB, set by the driver). A later attempt of the same job takes such a claim
over at once, wherever the earlier attempt ran: only the driver holding the job's lock starts
attempts, and it starts one only after the previous one was lost (its node died, its worker was
killed) or its previous driver's lock was taken over as dead. Without this, an attempt lost with
its node would block the retry for the whole REMOTE_STALE_S window.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from ftlab.env import now_iso
from ftlab.errors import FtlabError
from ftlab.io import disk_full_as_error

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
LOCKS_DIR = ".locks"  # beside the outputs it guards: Models/.locks, Testing/metrics/.locks, Testing/.jobs/.locks
# A lock file is created empty and filled a moment later; one still empty or unreadable after this
# many seconds belongs to an owner killed in between (there is no PID to check).
UNREADABLE_GRACE_S = 30.0
HEARTBEAT_S = 30.0
# Ten missed heartbeats: generous for NFS attribute caching and clock skew between machines.
REMOTE_STALE_S = 10 * HEARTBEAT_S
HEARTBEAT_ENV = "FTLAB_LOCK_HEARTBEAT_S"  # a shorter heartbeat (and so takeover window) for tests
NODE_ENV = "FTLAB_NODE_NAME"  # the name locks give this machine, where machines share a hostname
JOB_ENV = "FTLAB_JOB"  # set by a driver in its job's process: the job's id, recorded in its claims


def heartbeat_s() -> float:
    """How often a driver touches its locks: HEARTBEAT_S, or FTLAB_LOCK_HEARTBEAT_S when set."""
    raw = os.environ.get(HEARTBEAT_ENV, "")
    try:
        value = float(raw) if raw else HEARTBEAT_S
    except ValueError:
        raise FtlabError(f"{HEARTBEAT_ENV}={raw!r} must be a number of seconds, e.g. 30") from None
    if not value > 0:
        raise FtlabError(f"{HEARTBEAT_ENV}={raw!r} must be positive seconds, e.g. 30")
    return value


def remote_stale_s() -> float:
    """How long a lock from another machine may go untouched before it is judged dead."""
    return 10 * heartbeat_s()


def node_name() -> str:
    """This machine as locks, ledgers and journals name it: FTLAB_NODE_NAME, else the hostname."""
    return os.environ.get(NODE_ENV) or socket.gethostname()


def _process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except Exception:  # psutil missing, process gone or not ours to inspect
        return None


def pid_alive(pid: int, start_time: float | None = None) -> bool:
    """True if `pid` runs and, when known, started at `start_time` (PIDs are reused)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    if start_time is not None:
        actual = _process_start_time(pid)
        if actual is not None and abs(actual - start_time) > 1.0:
            return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except Exception:
        pass
    return True


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    start_time: float | None
    token: str
    acquired_at: str
    job: str = ""  # the job (FTLAB_JOB) whose attempt holds it; "" outside a driver

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.acquired_at}"


class JobLock:
    """A non-blocking lock: `acquire()` returns False when a live owner holds it, so a driver moves
    on to the next job instead of waiting. The file is written with os.open(O_EXCL) rather than
    ftlab.io's temp-file-and-rename because the exclusive create *is* the lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.token = uuid.uuid4().hex
        self.held = False

    def _payload(self) -> dict:
        pid = os.getpid()
        return {"pid": pid, "host": node_name(), "start_time": _process_start_time(pid),
                "token": self.token, "acquired_at": now_iso(), "job": os.environ.get(JOB_ENV, "")}

    def owner(self) -> LockOwner | None:
        """The current holder as recorded in the file; None if there is no lock or it is unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return LockOwner(int(data["pid"]), str(data["host"]), data.get("start_time"), str(data["token"]),
                             str(data.get("acquired_at", "")), str(data.get("job") or ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(self._payload()).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _owner_is_dead(self) -> bool:
        owner = self.owner()
        if owner is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return False  # released meanwhile; the next create attempt will tell
            return age > UNREADABLE_GRACE_S
        if owner.job and owner.job == os.environ.get(JOB_ENV):
            return True  # an earlier attempt of the job this process is the new attempt of (module doc)
        if owner.host != node_name():
            try:
                return time.time() - self.path.stat().st_mtime > remote_stale_s()
            except FileNotFoundError:
                return False
        return not pid_alive(owner.pid, owner.start_time)

    def acquire(self) -> bool:
        """Takes the lock without waiting; False if a live owner holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            self.held = True
            return True
        guard = self.path.parent / ".takeover.guard"
        with open(guard, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                # Re-checked under the guard: only a lock still dead now is removed.
                if self.path.exists() and self._owner_is_dead():
                    stale = self.owner()
                    log.warning("taking over stale lock %s (%s)", self.path.name,
                                stale.describe() if stale else "unreadable")
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                if self._create():
                    self.held = True
                    return True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False

    def touch(self) -> None:
        """The heartbeat: tells drivers on other machines that the owner is alive."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def release(self) -> None:
        if not self.held:
            return
        owner = self.owner()
        # Only our own file is removed; it cannot have been taken over while we live, but a
        # manual deletion followed by another driver's lock must survive our release.
        if owner is not None and owner.token == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False

    def __del__(self):  # a forgotten release in a long-lived process should not block others
        with contextlib.suppress(Exception):
            self.release()


def locks_dir(folder: Path) -> Path:
    """Where the locks of the outputs in `folder` live."""
    return folder / LOCKS_DIR


def lock_path(folder: Path, name: str) -> Path:
    """The lock of output `name` in `folder`."""
    return locks_dir(folder) / f"{name}{LOCK_SUFFIX}"


def is_locked_by_other(path: Path) -> LockOwner | None:
    """The live owner of an existing lock (for dry-run reports), else None."""
    lock = JobLock(path)
    if not path.exists() or lock._owner_is_dead():
        return None
    return lock.owner()


@contextlib.contextmanager
def output_claim(final_dir: str | os.PathLike, what: str = "output folder") -> Iterator[None]:
    """Held while one process builds `final_dir`, taken before the long work starts: a second
    process aiming at the same folder fails at once in one line instead of after hours of work.
    The lock (Models/.locks/<name>.lock) names its owner and is taken over when that owner died."""
    final_dir = Path(final_dir)
    lock = JobLock(lock_path(final_dir.parent, final_dir.name))
    with disk_full_as_error(lock.path):
        acquired = lock.acquire()
    if not acquired:
        owner = lock.owner()
        raise FtlabError(f"{what} {final_dir} is being built by another process "
                         f"({owner.describe() if owner else 'owner unknown'}); wait for it to finish, or choose "
                         "another name")
    try:
        yield
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            lock.path.parent.rmdir()  # only when no other claim is held
