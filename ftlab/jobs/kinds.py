"""The four kinds of job the engine (ftlab.jobs.engine) runs for `ftlab study` and `ftlab
orchestrate`: snapshot, train, quantize, evaluate, registered in its JOB_KINDS. Each runs a real
ftlab command in its own process and is judged by its output:
- snapshot / train / quantize build `Models/<run name>.v<id>`: the folder only appears once
  complete (staging folder, then rename), and its name carries the job's identity, so "the folder
  exists" means "this job, with these settings and these inputs, is done";
- evaluate is `ftlab evaluate <model>`, judged by the orchestrator's planner (every requested task
  current in the model's metrics file), under the model's evaluation lock (a study and a sweep never
  evaluate one model at once), with a `<model>.error.json` report when it fails (removed once it
  succeeds).

The kinds read the stages' own checks (the orchestrator's discovery, the evaluator's settings), so
this module sits with the compositions, above the engine it registers into (docs/ARCHITECTURE.md,
Layers).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import yaml

from ftlab.env import now_iso
from ftlab.errors import FtlabError
from ftlab.eval.records.results import request_hash
from ftlab.io import atomic_write_json, atomic_write_text, read_json
from ftlab.jobs.engine import DONE, JOB_KINDS, SKIP, STALE, TODO, Job, Status
from ftlab.jobs.locks import lock_path, node_name
from ftlab.jobs.process import ProcessResult
from ftlab.orchestrate.discovery import (
    BAD_FOLDER,
    FAILED,
    FAILED_EARLIER,
    MISSING,
    UP_TO_DATE,
    EvalOptions,
    assess,
    error_path,
    metrics_name,
    model_ref_for,
)
from ftlab.orchestrate.discovery import (
    STALE as STALE_REASON,
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
        from ftlab.eval.evaluator import expected_settings  # lazy: ftlab.eval.evaluator imports numpy; only a failure report needs it

        atomic_write_json(err, {
            "model": model, "error": result.error, "exit_code": result.returncode,
            "traceback_tail": result.output_tail, "time": now_iso(), "runtime_s": round(result.runtime_s, 2),
            "host": result.host or node_name(), "request_hash": request_hash(expected_settings(cfg)),
            "command": self.command(job, workspace),
        })
        return ""


def mean_accuracy(workspace: Workspace, model: str) -> float:
    from ftlab.eval.evaluator import metrics_paths  # lazy: ftlab.eval.evaluator imports numpy; read once a job finished

    with contextlib.suppress(FtlabError, AttributeError, TypeError):
        doc = read_json(metrics_paths(workspace, model)[0], "metrics file")
        value = (doc.get("summary") or {}).get("mean_accuracy")
        if isinstance(value, (int, float)):
            return float(value)
    return math.nan


def jobs_dir(workspace: Workspace) -> Path:
    """The ledger (each job's last outcome) and the configs of train jobs, shared by all studies."""
    return workspace.jobs_dir


def model_folder(workspace: Workspace, name: str) -> Path:
    return workspace.models_dir / name


class _ModelFolderKind:
    """Jobs whose output is a model folder named after the job (snapshot, train, quantize)."""

    name = ""

    def finished(self, job: Job, workspace: Workspace, result, ok: bool) -> str:
        return str(model_folder(workspace, job.name)) if ok else ""

    def status(self, job: Job, workspace: Workspace) -> Status:
        folder = model_folder(workspace, job.name)
        if (folder / TRAINING_METADATA_FILE).is_file():
            return Status(DONE, "model folder complete")
        if folder.exists():
            # Folders are published whole, so this one was put here by hand or by another tool.
            return Status(STALE, f"{folder} exists but is not a finished ftlab model folder")
        return Status(TODO, "not built yet")

    def lock_path(self, job: Job, workspace: Workspace) -> Path:
        # Not Models/.locks: the job's own `ftlab train`/`quantize` process claims the output folder
        # there (ftlab.jobs.locks.output_claim) while this driver holds the job's lock.
        return lock_path(workspace.jobs_dir, job.name)


class _TrainKind(_ModelFolderKind):
    """`ftlab train --config <the recipe's full config>` (also base snapshots: data.dataset=None)."""

    def command(self, job: Job, workspace: Workspace) -> list[str]:
        config = json.loads(json.dumps(job.data["config"]))
        config["train"]["output_dir"] = str(model_folder(workspace, job.name))
        source = job.data.get("source")  # the base snapshot a recipe trains from
        if source:
            config["model"]["name"] = str(model_folder(workspace, source))
            config["model"]["revision"] = None  # the snapshot pinned it
        return ["train", "--config", str(_config_file(workspace, job, config))]


class SnapshotKind(_TrainKind):
    name = "snapshot"


class TrainKind(_TrainKind):
    name = "train"


class QuantizeKind(_ModelFolderKind):
    """`ftlab quantize --config <the variant's QuantRunConfig>`, reading the source job's folder and
    writing `Models/<name>`."""

    name = "quantize"

    def command(self, job: Job, workspace: Workspace) -> list[str]:
        config = json.loads(json.dumps(job.data["config"]))
        config["run"]["model"] = str(model_folder(workspace, job.data["source"]))
        config["run"]["output"] = str(model_folder(workspace, job.name))
        return ["quantize", "--config", str(_config_file(workspace, job, config))]


def config_path(workspace: Workspace, job: Job) -> Path:
    """Where a job's full config is written for its command (absent for evaluation jobs)."""
    return jobs_dir(workspace) / f"{job.id}.{job.kind}.yaml"


def _config_file(workspace: Workspace, job: Job, config: dict) -> Path:
    path = config_path(workspace, job)
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


for _kind in (SnapshotKind(), TrainKind(), QuantizeKind(), EvaluateKind()):
    JOB_KINDS.add(_kind.name, _kind)
