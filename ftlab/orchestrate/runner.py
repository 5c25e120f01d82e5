"""One model's evaluation in its own process (ftlab.jobs.process), judged by its metrics file."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.jobs.process import ftlab_argv, run_process


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
        return ftlab_argv(self.workdir, "evaluate", self.folder, *self.eval_args, python=self.python)


@dataclass
class JobResult:
    model: str
    ok: bool
    returncode: int | None
    runtime_s: float
    error: str | None = None
    output_tail: list[str] = field(default_factory=list)
    host: str = ""


def run_job(job: EvalJob) -> JobResult:
    """Runs `ftlab evaluate` for one model and reports success only if complete metrics exist."""
    res = run_process(job.command(), cwd=job.cwd or job.workdir, threads=job.threads, timeout_s=job.timeout_s,
                      name=job.model)
    ok = res.ok and metrics_complete(job)
    error = None if ok else (res.error or "finished without writing complete metrics")
    return JobResult(job.model, ok, res.returncode, res.runtime_s, error, res.output_tail, res.host)


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
