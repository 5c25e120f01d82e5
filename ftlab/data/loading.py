"""Loading examples for a task or a custom file, with validation before anything runs.

Where a registered task's rows come from, first match wins: `source_dir` argument, the
workspace's `Datasets/`, `$FTLAB_DATASETS`, then the hub. Custom files (JSON, JSONL, parquet,
CSV) may be alpaca (instruction/input/output), sharegpt (conversations), chat messages or
question/answer rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ftlab.data.tasks import CUSTOM_SUFFIXES, TASKS, Task, custom_task
from ftlab.errors import FtlabError
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS
from ftlab.paths import Workspace

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass
class Example:
    task: str
    index: int  # row position in the split (stable across runs: resume keys on it)
    question: str  # rendered question text (without the task instruction)
    answer: str  # canonical gold answer
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. messages (chat data), answers (squad)


def is_custom_file(ref: str) -> bool:
    return str(ref).lower().endswith(CUSTOM_SUFFIXES)


def resolve_task(ref: str, answer_kind: str | None = None) -> Task:
    """A registered task, or a custom task for a data file (answer kind inferred unless given)."""
    if ref in TASKS:
        return TASKS.get(ref)
    if is_custom_file(ref):
        path = Path(ref)
        if not path.is_file():
            raise FtlabError(f"dataset file {path} not found; give an existing .json/.jsonl/.parquet/.csv file")
        rows = _read_custom_rows(path)
        kind = answer_kind or _infer_answer_kind([r["answer"] for r in rows])
        return custom_task(path.stem, kind)
    return TASKS.get(ref)  # raises with the valid names


# --- files --------------------------------------------------------------------------------


def read_table(path: Path) -> list[dict]:
    import pandas as pd  # lazy: pandas takes 1.2 s

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix == ".csv":
            df = pd.read_csv(path, keep_default_na=False)
        elif suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise FtlabError(f"dataset file {path} line {n} is not valid JSON ({exc.msg}); fix that line") from None
            return rows
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = data.get("data") or data.get("rows") or data.get("examples")
            if not isinstance(data, list):
                raise FtlabError(f"dataset file {path} must hold a JSON list of rows (or {{\"data\": [...]}})")
            return data
    except FtlabError:
        raise
    except json.JSONDecodeError as exc:
        raise FtlabError(f"dataset file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except Exception as exc:  # pyarrow/pandas raise many types for damaged files
        raise FtlabError(f"cannot read dataset file {path}: {str(exc).splitlines()[0]}") from None
    return df.to_dict(orient="records")


def _chat_to_qa(messages: list, path: Path, n: int) -> dict:
    if hasattr(messages, "tolist"):  # parquet gives nested lists back as numpy arrays
        messages = messages.tolist()
    if not isinstance(messages, list) or not messages:
        raise FtlabError(f"dataset file {path} row {n}: messages must be a non-empty list")
    norm = []
    for m in messages:
        if not isinstance(m, dict):
            raise FtlabError(f"dataset file {path} row {n}: each message must be an object with role/content")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = {"human": "user", "gpt": "assistant", "model": "assistant", "bot": "assistant"}.get(role, role)
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise FtlabError(f"dataset file {path} row {n}: message roles must be system/user/assistant (or human/gpt) with text content")
        norm.append({"role": role, "content": content})
    # A conversation that does not end with the assistant's turn has no answer to learn or score:
    # it counts as an empty answer (dropped and reported in validate_rows), like one without a
    # user turn counts as an empty question.
    answer = norm[-1]["content"] if norm[-1]["role"] == "assistant" else None
    prompt = norm[:-1] if answer is not None else norm
    users = [m for m in prompt if m["role"] == "user"]
    return {"question": users[-1]["content"] if users else None, "answer": answer, "messages": prompt}


def _read_custom_rows(path: Path) -> list[dict]:
    raw = read_table(path)
    if not raw:
        raise FtlabError(f"dataset file {path} is empty; it needs at least one row")
    first = raw[0] if isinstance(raw[0], dict) else {}
    cols = set(first)
    rows = []
    for n, r in enumerate(raw):
        if not isinstance(r, dict):
            raise FtlabError(f"dataset file {path} row {n} is not an object")
        if {"instruction", "output"} <= cols:
            inp = str(r.get("input") or "").strip()
            q = str(r.get("instruction") or "").strip() + (f"\n\n{inp}" if inp else "")
            rows.append({"question": q, "answer": r.get("output")})
        elif "conversations" in cols:
            rows.append(_chat_to_qa(r.get("conversations"), path, n))
        elif "messages" in cols:
            rows.append(_chat_to_qa(r.get("messages"), path, n))
        elif {"question", "answer"} <= cols:
            rows.append({k: r.get(k) for k in r})
        else:
            raise FtlabError(
                f"dataset file {path} has columns {sorted(cols)}; expected alpaca (instruction, input, output), "
                "sharegpt (conversations), chat (messages) or question/answer columns"
            )
    return rows


def _infer_answer_kind(answers: list) -> str:
    """The first answer kind (by `infer_rank`) that recognises every non-empty answer."""
    vals = [str(a).strip() for a in answers if not _is_empty(a)]
    ranked = sorted((k for _, k in ANSWER_KINDS.items() if k.recognises is not None), key=lambda k: k.infer_rank)
    for kind in ranked:
        if kind.recognises(vals):
            return kind.name
    raise FtlabError(f"no answer kind matches answers such as {vals[:3]}; name the answer kind "
                     f"({', '.join(ANSWER_KINDS.names())})")


# --- registered tasks ---------------------------------------------------------------------


def task_file(task: Task, split: str, workspace: Workspace | None = None, source_dir: str | os.PathLike | None = None) -> Path | None:
    if task.file_stem is None:
        return None
    name = f"{split}-{task.file_stem}.parquet"
    folders = [source_dir, (workspace or Workspace.default()).datasets_dir, os.environ.get("FTLAB_DATASETS")]
    for folder in folders:
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


_SLICE = re.compile(r"^(?P<split>[\w.-]+)(?:\[(?P<a>\d*):(?P<b>\d*)\])?$")


class DatasetUnavailable(FtlabError):
    """A task's rows are neither here (generated, a local file) nor fetchable from the hub now.
    A caller that chose the task itself (not the user) may go on without it."""


_TRUE = {"1", "on", "yes", "true"}  # huggingface_hub's reading of its boolean variables
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable() -> str | None:
    """Why the hub cannot be asked now, known without a request: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE,
    or a hub host name that does not resolve (no network; skipped behind a proxy, which resolves
    names itself). None: try it. Without this, an offline fetch costs huggingface_hub's five
    retries per request (1+2+4+8+8 s back-off): 23 s of the 42 s an offline `ftlab export` took."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]} is set"
    if any(os.environ.get(p) for p in _PROXIES):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return f"{host} cannot be resolved (no network)"
    return None


def _fetch_hint(task: Task, split: str) -> str:
    return f"put {split}-{task.file_stem}.parquet in Datasets/ (ftlab datasets prepare --from DIR)"


def missing_rows(ref: str | Task, split: str, workspace: Workspace | None = None,
                 source_dir: str | os.PathLike | None = None) -> str | None:
    """Why a split's rows cannot be had, found without reading or fetching them: None when they are
    generated, on disk (a data file, `source_dir`, Datasets/, $FTLAB_DATASETS) or the hub may be
    asked; else the reason (offline and no local file). Unknown names raise as in resolve_task."""
    if not isinstance(ref, Task):
        if is_custom_file(str(ref)) and str(ref) not in TASKS:
            resolve_task(str(ref))  # a missing file is an error of its own
            return None
        ref = resolve_task(str(ref))
    task = ref
    if task.generated is not None or task_file(task, split, workspace, source_dir) is not None or not task.hub_id:
        return None
    reason = hub_unreachable()
    if reason is None:
        return None
    return f"{split}-{task.file_stem}.parquet is in no data folder (the one given, Datasets/, $FTLAB_DATASETS) and the hub cannot be asked ({reason})"


def hub_rows(task: Task, split: str, limit: int | None) -> list[dict]:
    if not task.hub_id:
        raise FtlabError(f"task {task.name} has no hub source")
    reason = hub_unreachable()
    if reason is not None:
        raise DatasetUnavailable(f"cannot fetch {task.hub_id} ({split}) from the hub: {reason}; {_fetch_hint(task, split)}")
    spec = task.hub_splits.get(split)
    if spec is None:
        raise FtlabError(f"task {task.name} has no {split!r} split; valid: {', '.join(task.hub_splits)}")
    m = _SLICE.match(spec)
    start = int(m["a"] or 0)
    stop = int(m["b"]) if m["b"] else None
    if limit is not None:
        stop = start + limit if stop is None else min(stop, start + limit)
    try:
        import datasets  # lazy: datasets takes 2.3 s

        ds = datasets.load_dataset(task.hub_id, task.hub_config, split=m["split"], streaming=True)
        it = ds.skip(start) if start else ds
        it = it.take(stop - start) if stop is not None else it
        rows = [task.from_hub(dict(r)) if task.from_hub else dict(r) for r in it]
    except FtlabError:
        raise
    except Exception as exc:
        raise DatasetUnavailable(
            f"cannot fetch {task.hub_id} ({split}) from the hub: {str(exc).splitlines()[0][:160]}; "
            f"{_fetch_hint(task, split)}"
        ) from None
    return rows


def _task_rows(task: Task, split: str, workspace, source_dir, limit) -> tuple[list[dict], str]:
    if task.generated is not None:
        return task.generated(split, None), "generated"
    path = task_file(task, split, workspace, source_dir)
    if path is not None:
        return read_table(path), str(path)
    return hub_rows(task, split, limit), f"hub:{task.hub_id}"


def validate_rows(task: Task, rows: list[dict], origin: str) -> tuple[list[dict], list[str]]:
    """Checks columns, types and labels; drops empty rows. Returns (rows, warnings)."""
    if not rows:
        raise FtlabError(f"dataset {task.name} ({origin}) is empty; it needs at least one row")
    missing = [c for c in task.columns if c not in rows[0]]
    if missing:
        raise FtlabError(
            f"dataset {task.name} ({origin}) lacks column(s) {missing}; has {sorted(rows[0])}. "
            f"Required: {list(task.columns)}"
        )
    kind = ANSWER_KINDS.get(task.answer_kind)
    warnings, kept, no_question, no_answer = [], [], 0, 0
    for r in rows:
        if _is_empty(r.get("question")):
            no_question += 1
        elif _is_empty(r.get("answer")) and not kind.empty_gold:
            no_answer += 1
        else:
            kept.append(r)
    if no_question:
        warnings.append(f"{no_question} row(s) with an empty question (or no user turn) dropped")
    if no_answer:
        warnings.append(f"{no_answer} row(s) with an empty answer (or no final assistant turn) dropped")
    if not kept:
        raise FtlabError(f"dataset {task.name} ({origin}) has no usable rows: all {len(rows)} have an empty question "
                         "or answer (or lack a user or final assistant turn); fill them in")
    if task.labels:
        bad = sorted({task.gold(r) for r in kept} - set(task.labels))
        if bad:
            raise FtlabError(f"dataset {task.name} ({origin}) has answers outside the label set {list(task.labels)}: {bad[:5]}")
    if kind.gold_warning is not None:
        warning = kind.gold_warning([r["answer"] for r in kept])
        if warning:
            warnings.append(warning)
    seen, dups = set(), 0
    for r in kept:
        key = (task.render(r), task.gold(r))
        dups += key in seen
        seen.add(key)
    if dups:
        warnings.append(f"{dups} duplicate row(s) (kept)")
    return kept, warnings


def _is_empty(value: Any) -> bool:
    """None, NaN (pandas' missing value) or whitespace-only text; 0 and False are answers."""
    if value is None or (isinstance(value, float) and value != value):
        return True
    return isinstance(value, str) and not value.strip()


def load_examples(task_or_file: str | Task, split: str = "test", *, workspace: Workspace | None = None,
                  limit: int | None = None, source_dir: str | os.PathLike | None = None,
                  answer_kind: str | None = None) -> list[Example]:
    """The first `limit` rows (deterministic) of a split, validated and rendered."""
    if split not in SPLITS:
        raise FtlabError(f"split {split!r} is unknown; valid: {', '.join(SPLITS)}")
    if limit is not None and limit <= 0:
        raise FtlabError(f"limit={limit} must be positive")
    if isinstance(task_or_file, Task):
        task = task_or_file
        custom = False
    else:
        custom = is_custom_file(str(task_or_file)) and str(task_or_file) not in TASKS
        task = resolve_task(str(task_or_file), answer_kind)
    if custom:
        path = Path(str(task_or_file))
        rows, origin = _read_custom_rows(path), str(path)
    else:
        rows, origin = _task_rows(task, split, workspace, source_dir, limit)
    rows, warnings = validate_rows(task, rows, origin)
    for w in warnings:
        log.warning("dataset %s (%s): %s", task.name, origin, w)
    if limit is not None:
        rows = rows[:limit]
    out = []
    for i, r in enumerate(rows):
        meta = {k: r[k] for k in ("messages", "answers", "kind", "title") if k in r and r[k] is not None}
        if "answers" in meta and hasattr(meta["answers"], "tolist"):
            meta["answers"] = meta["answers"].tolist()
        out.append(Example(task.name, i, task.render(r), task.gold(r), meta))
    return out


def dataset_fingerprint(examples: list[Example]) -> str:
    """Content hash of (question, answer) pairs: two runs trained on the same rows share it."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.question, e.answer], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
