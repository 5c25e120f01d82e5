"""Atomic file writing: every file the platform writes goes through here (temp file, then rename)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Converts dataclasses, paths, enums, numpy and torch scalars into plain JSON values."""
    import dataclasses
    import enum

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(to_jsonable(record), ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
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


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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


@contextlib.contextmanager
def staging_dir(final_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Builds a folder under a temporary name and renames it into place only when complete.

    A crash or error leaves no folder that looks finished; stale staging folders are named
    `.staging-*` so discovery code ignores them. At publish every file gets normal permissions.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not overwrite:
        raise FtlabError(
            f"output folder {final_dir} already exists; set overwrite=true (or --overwrite) to replace it"
        )
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_dir.parent / f".staging-{final_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    normalize_modes(tmp)
    if final_dir.exists():
        old = final_dir.parent / f".replaced-{final_dir.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final_dir)
    _fsync_dir(final_dir.parent)
