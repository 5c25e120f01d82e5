"""Writes `Datasets/train-*.parquet` and `test-*.parquet` from a local folder or the hub.

Rows are normalised (ARC digit labels -> letters, openmath floats -> canonical numbers kept as
given, squad's empty answer = unanswerable) and validated. A prepare is all or nothing: every file
is written into a staging folder first and the set is published together once all of them are
complete, so a failure on any source (or Ctrl-C, or a full disk) leaves `Datasets/` as it was.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from ftlab.data.loading import hub_rows, read_table, validate_rows
from ftlab.data.tasks import TASKS, Task
from ftlab.errors import FtlabError
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS
from ftlab.io import atomic_write_bytes, staged_files
from ftlab.paths import Workspace

log = logging.getLogger(__name__)


def _write_parquet(rows: list[dict], path: Path) -> None:
    import pandas as pd  # lazy: pandas takes 1.2 s

    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def prepare_task(task: Task, out_dir: Path, from_dir: Path | None, limit: int | None) -> list[dict]:
    """Returns one report row per split written."""
    report = []
    for split in ("train", "test"):
        if task.generated is not None:
            rows, origin = task.generated(split, limit), "generated"
            name = f"{split}-{task.name}.parquet"
        else:
            name = f"{split}-{task.file_stem}.parquet"
            if from_dir is not None:
                src = from_dir / name
                if not src.is_file():
                    raise FtlabError(f"{src} not found; --from must hold {name} (or leave --from out to use the hub)")
                rows, origin = read_table(src), str(src)
            else:
                rows, origin = hub_rows(task, split, limit), f"hub:{task.hub_id}"
        rows, warnings = validate_rows(task, rows, origin)
        if limit is not None:
            rows = rows[:limit]
        if task.labels and ANSWER_KINDS.get(task.answer_kind).canonical_gold_on_disk:
            # Canonical labels on disk, so every reader (ours or a notebook) sees A-D, not ARC's 1-4.
            for r in rows:
                r["answer"] = task.gold(r)
        _write_parquet(rows, out_dir / name)
        report.append({"task": task.name, "split": split, "rows": len(rows), "file": str(out_dir / name),
                       "origin": origin, "warnings": "; ".join(warnings)})
    return report


def prepare_datasets(tasks: list[str] | None = None, workspace: Workspace | None = None,
                     from_dir: str | os.PathLike | None = None, limit: int | None = None) -> list[dict]:
    ws = workspace or Workspace.default()
    names = tasks or TASKS.names()
    selected = [TASKS.get(n) for n in names]  # validates every name before writing anything
    src = Path(from_dir) if from_dir else None
    if src is not None and not src.is_dir():
        raise FtlabError(f"--from {src} is not a folder")
    report = []
    with staged_files(ws.datasets_dir) as stage:
        for task in selected:
            report += prepare_task(task, stage, src, limit)
    for r in report:
        r["file"] = str(ws.datasets_dir / Path(r["file"]).name)
    return report
