"""The four kinds of study job — snapshot, train, quantize, evaluate — registered in the engine's
JOB_KINDS. Each runs a real ftlab command in its own process and is judged by its output:

- snapshot / train / quantize build `Models/<run name>.v<id>`: the folder only appears once
  complete (staging folder, then rename), and its name carries the job's identity, so "the folder
  exists" means "this job, with these settings and these inputs, is done";
- evaluate is the orchestrator's evaluation job (ftlab.orchestrate.job): done when the model's
  metrics file holds every study task, current, under the same lock as `ftlab orchestrate`.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ftlab.io import atomic_write_text
from ftlab.jobs.engine import DONE, JOB_KINDS, STALE, TODO, Job, Status
from ftlab.jobs.locks import lock_path
from ftlab.paths import Workspace
from ftlab.schema import TRAINING_METADATA_FILE



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


for _kind in (SnapshotKind(), TrainKind(), QuantizeKind()):
    JOB_KINDS.add(_kind.name, _kind)
