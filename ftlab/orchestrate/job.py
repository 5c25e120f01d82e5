"""The evaluation job, shared by `ftlab orchestrate` and `ftlab study`: `ftlab evaluate <model>`
in its own process, judged by the orchestrator's planner (every requested task current in the
model's metrics file), under the model's evaluation lock, with a `<model>.error.json` report when
it fails (removed once it succeeds)."""

from __future__ import annotations

import contextlib
import math
import socket
from pathlib import Path

from ftlab.env import now_iso
from ftlab.io import atomic_write_json, read_json
from ftlab.jobs.engine import DONE, JOB_KINDS, SKIP, STALE, TODO, Job, Status
from ftlab.jobs.locks import lock_path
from ftlab.jobs.process import ProcessResult
from ftlab.orchestrate.discovery import (
    BAD_FOLDER, FAILED, FAILED_EARLIER, MISSING, STALE as STALE_REASON, UP_TO_DATE, EvalOptions, assess, error_path,
    metrics_name, model_ref_for,
)
from ftlab.paths import Workspace
from ftlab.schema import TRAINING_METADATA_FILE

EVALUATE = "evaluate"


def evaluation_data(model_folder_name: str, options: EvalOptions, *, retry_failed: bool = True,
                    since: float | None = None) -> dict:
    """A job's data: the folder under Models/, the `ftlab evaluate` options, and whether a model
    whose last evaluation failed (its error report) is retried; `since` (epoch seconds): a failure
    recorded after it is another driver's fresh attempt and is not retried again now."""
    return {"model": model_folder_name, "options": {"datasets": options.datasets, "limit": options.limit,
                                                    "batch_size": options.batch_size,
                                                    "max_new_tokens": options.max_new_tokens,
                                                    "config": options.config, "overrides": list(options.overrides)},
            "retry_failed": retry_failed, "since": since}


class EvaluateKind:
    name = EVALUATE

    @staticmethod
    def _options(job: Job) -> EvalOptions:
        return EvalOptions(**job.data["options"])

    @staticmethod
    def _folder(job: Job, workspace: Workspace) -> Path:
        return workspace.models_dir / job.data["model"]

    def status(self, job: Job, workspace: Workspace) -> Status:
        folder = self._folder(job, workspace)
        if not (folder / TRAINING_METADATA_FILE).is_file():
            return Status(TODO, "model not built yet")
        item = assess(workspace, folder, self._options(job).resolve(model_ref_for(folder)),
                      retry_failed=job.data.get("retry_failed", True))
        if item.reason == UP_TO_DATE:
            return Status(DONE, item.detail)
        if item.reason in (FAILED_EARLIER, BAD_FOLDER):
            return Status(SKIP, f"{item.reason}: {item.detail}")
        if item.reason == FAILED and job.data.get("since") is not None:
            with contextlib.suppress(FileNotFoundError):
                if error_path(workspace, item.model).stat().st_mtime >= job.data["since"]:
                    return Status(SKIP, "failed again in a concurrent sweep")
        if item.reason == STALE_REASON:
            return Status(STALE, item.detail)
        return Status(TODO, item.detail if item.reason != MISSING else "not evaluated yet")

    def command(self, job: Job, workspace: Workspace) -> list[str]:
        return [EVALUATE, model_ref_for(self._folder(job, workspace)), *self._options(job).cli_args()]

    def lock_path(self, job: Job, workspace: Workspace) -> Path:
        # The orchestrator's per-model lock: a study and a sweep never evaluate one model at once.
        return lock_path(workspace.metrics_dir, metrics_name(self._folder(job, workspace)))

    def finished(self, job: Job, workspace: Workspace, result: ProcessResult, ok: bool) -> str:
        folder = self._folder(job, workspace)
        model = metrics_name(folder)
        err = error_path(workspace, model)
        if ok:
            with contextlib.suppress(FileNotFoundError):
                err.unlink()
            acc = mean_accuracy(workspace, model)
            return "" if math.isnan(acc) else f"mean accuracy {acc:.4f}"
        cfg = self._options(job).resolve(model_ref_for(folder))
        from ftlab.eval.evaluator import expected_settings
        from ftlab.eval.results import request_hash

        atomic_write_json(err, {
            "model": model, "error": result.error, "exit_code": result.returncode,
            "traceback_tail": result.output_tail, "time": now_iso(), "runtime_s": round(result.runtime_s, 2),
            "host": result.host or socket.gethostname(), "request_hash": request_hash(expected_settings(cfg)),
            "command": self.command(job, workspace),
        })
        return ""


def mean_accuracy(workspace: Workspace, model: str) -> float:
    from ftlab.errors import FtlabError
    from ftlab.eval.evaluator import metrics_paths

    with contextlib.suppress(FtlabError, AttributeError, TypeError):
        doc = read_json(metrics_paths(workspace, model)[0], "metrics file")
        value = (doc.get("summary") or {}).get("mean_accuracy")
        if isinstance(value, (int, float)):
            return float(value)
    return math.nan


JOB_KINDS.add(EVALUATE, EvaluateKind())
