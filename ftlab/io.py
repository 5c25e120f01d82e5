"""Atomic file writing: every file the platform writes goes through here (temp file, then rename).

The same place turns the faults of writing into one line: a full disk names the disk (and leaves
the previous file or folder as it was), an interrupt during a folder build removes the staging
folder, and publishing a folder is never split by a signal or mixed with another process's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

from ftlab.errors import FtlabError


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not all filesystems allow opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


# --- full disks ----------------------------------------------------------------------------

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "errno 28", "disk quota exceeded")
# Below this much free space a failed write is the disk's fault even when the writer's message
# does not say so (torch.save reports a full disk as "unexpected pos N vs M").
LOW_SPACE_BYTES = 1 << 20


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = _existing(path).resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _describe_disk(mount: Path) -> str:
    """`/data (/dev/sdb1, ext4)`; just the mount point where /proc/mounts is not readable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1].replace("\\040", " ") == str(mount):
                return f"{mount} ({fields[0]})" if fields[0] == fields[2] else f"{mount} ({fields[0]}, {fields[2]})"
    return str(mount)


def disk_free_bytes(path: str | os.PathLike) -> int:
    return shutil.disk_usage(_existing(Path(path))).free


def disk_full_error(exc: BaseException, path: str | os.PathLike, writing: str | None = None) -> FtlabError | None:
    """One line naming the disk when `exc` means the disk holding `path` is full, else None.
    `writing` says what was being written when the exception does not name a file (default: `path`)."""
    if isinstance(exc, FtlabError) or not isinstance(exc, Exception):
        return None
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    full = any(getattr(e, "errno", None) in _DISK_FULL_ERRNOS
               or any(t in str(e).lower() for t in _DISK_FULL_TEXT) for e in chain)
    try:
        free = disk_free_bytes(path)
    except OSError:
        free = None
    if not full and free is not None and free < LOW_SPACE_BYTES:
        full = isinstance(exc, (OSError, RuntimeError)) or type(exc).__name__ == "SafetensorError"
    if not full:
        return None
    left = f", {free / 2**20:.1f} MB free" if free is not None else ""
    target = next((e.filename for e in chain if isinstance(getattr(e, "filename", None), str)), None) or writing or path
    return FtlabError(f"disk full: no space left on {_describe_disk(_mount_point(Path(path)))}{left} while writing "
                      f"{target}; nothing was published and earlier results are untouched; free some space or "
                      "use --workdir on a larger disk")


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike) -> Iterator[None]:
    """Re-raises a full-disk failure inside the block as `disk_full_error`'s one line."""
    try:
        yield
    except Exception as exc:
        err = disk_full_error(exc, path)
        if err is None:
            raise
        raise err from None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM that arrive inside the block take effect when it ends, so publishing or
    cleaning up a folder is never cut in half. Python-level (handlers swapped, not the signal
    mask): with worker threads alive the kernel may deliver a signal to any thread."""

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None:  # None: installed outside Python, cannot be restored
            saved[sig] = handler
            signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


# --- files -----------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; results are shared files, so use the mode open() would have given.
    os.fchmod(fd, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = disk_full_error(exc, path)  # measured before the temp file frees its space
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full is not None:
            raise full from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Converts dataclasses, paths, enums, numpy and torch scalars into plain JSON values."""

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        # JSON has no NaN/inf; null keeps the file parseable by strict readers.
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return to_jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    text = json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, sort_keys=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FtlabError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise FtlabError(f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or delete it") from None


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Appends one JSON line and fsyncs, so a kill leaves at most one truncated last line."""
    append_jsonl_lines(path, [record])


def append_jsonl_lines(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """Appends JSON lines with one fsync (a batch's records); a kill leaves at most one truncated
    last line, which read_jsonl skips."""
    path = Path(path)
    text = "".join(json.dumps(to_jsonable(r), ensure_ascii=False) + "\n" for r in records)
    if not text:
        return
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Reads JSON lines; a truncated or corrupt line (a kill mid-write) is skipped, not fatal."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def dir_size_bytes(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def normalize_modes(folder: str | os.PathLike) -> None:
    """Gives every file and folder under `folder` the mode a plain open()/mkdir() would (0644/0755
    under umask 022). safetensors >= 0.8 writes through a temp file created 0600 and renames it
    into place (safetensors/safetensors#782), so `model.safetensors` came out unreadable to other
    users while the rest of the folder was not."""
    file_mode, dir_mode = 0o666 & ~_UMASK, 0o777 & ~_UMASK
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), dir_mode)
        for f in files:
            path = os.path.join(root, f)
            if not os.path.islink(path):
                os.chmod(path, file_mode)
    os.chmod(folder, dir_mode)


def _exists_error(final_dir: Path) -> FtlabError:
    return FtlabError(f"output folder {final_dir} already exists; set overwrite=true (or --overwrite) to replace it")


@contextlib.contextmanager
def staging_dir(final_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Builds a folder under a temporary name and renames it into place only when complete.

    Every output folder (training, quantization, export, base snapshots) is built here, so each
    gets the same guarantees: an error, Ctrl-C or SIGTERM (which `ftlab.cli.guarded` turns into an
    exception) removes the staging folder; a full disk is one line naming the disk; the previous
    folder stays until the new one is complete; without `overwrite`, a folder another process
    published meanwhile is left alone and this one fails. Stale staging folders (kill -9) are
    named `.staging-*` so discovery code ignores them. At publish every file gets normal
    permissions (`normalize_modes`).
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not overwrite:
        raise _exists_error(final_dir)
    tmp = final_dir.parent / f".staging-{final_dir.name}-{uuid.uuid4().hex[:8]}"
    with disk_full_as_error(final_dir):
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    with _removed_on_failure(tmp, final_dir):
        yield tmp
    normalize_modes(tmp)
    with signals_deferred():
        _publish(tmp, final_dir, overwrite)


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, target: Path) -> Iterator[None]:
    """Any failure in the block (error, Ctrl-C, SIGTERM) removes the staging folder `tmp`; a full
    disk becomes one line naming it (measured before the staged files free their space)."""
    try:
        yield
    except BaseException as exc:
        full = disk_full_error(exc, target)
        with signals_deferred():
            shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from None
        raise


def _publish(tmp: Path, final_dir: Path, overwrite: bool) -> None:
    if overwrite and final_dir.exists():
        old = final_dir.parent / f".replaced-{final_dir.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            # rename(2) refuses a non-empty target, so a folder that another process published
            # since the check above is never replaced or mixed with this one.
            os.rename(tmp, final_dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) or final_dir.exists():
                raise FtlabError(f"output folder {final_dir} was published by another process while this one "
                                 "was building it; theirs was left as it is (pass overwrite to replace it)") from None
            raise
    _fsync_dir(final_dir.parent)


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Files written into the yielded staging folder appear in `folder` together, once the block
    succeeds (each by rename, with signals held off); on any failure none of them does."""
    folder = Path(folder)
    tmp = folder / f".staging-{uuid.uuid4().hex[:8]}"
    with disk_full_as_error(folder):
        tmp.mkdir(parents=True)
    with _removed_on_failure(tmp, folder):
        yield tmp
    normalize_modes(tmp)
    with signals_deferred():
        for f in sorted(tmp.iterdir()):
            os.replace(f, folder / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(folder)
