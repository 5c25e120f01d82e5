"""Weights & Biases: each job is a run of the study's group (`group` = the study's name, `job_type`
= the job's kind), the study itself a run of job type `study` carrying the report as an artifact.
W&B has no child runs; the group is its way of holding a study's runs together.

A run's id is derived from its key, so logging it again resumes the same run rather than adding
one; the keys logged to a project are kept in `Testing/tracking/wandb-<project>.json` (written
once a run finished). `WANDB_MODE=offline` keeps the runs under `Testing/tracking/wandb/` for
`wandb sync`; `tracking.uri` is the server's base URL."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ftlab import console
from ftlab.config import TrackingConfig
from ftlab.io import atomic_write_json
from ftlab.paths import Workspace
from ftlab.tracking.base import ROLE_TAG, RunRecord

_QUIET_ENV = {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_CODE": "true", "WANDB_DISABLE_GIT": "true"}


def run_id(key: str) -> str:
    """The W&B run id of a key (letters, digits, `-` and `_`, at most 64)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", key)[:64]


class WandbSession:
    def __init__(self, settings: TrackingConfig, workspace: Workspace, experiment: str):
        for name, value in _QUIET_ENV.items():
            os.environ.setdefault(name, value)
        if settings.uri:
            os.environ["WANDB_BASE_URL"] = settings.uri
        with console.quiet_third_party():
            import wandb  # lazy: wandb takes seconds to import; only --track needs it
        if not console.VERBOSE:
            logging.getLogger("wandb").setLevel(logging.ERROR)
        self.wandb = wandb
        self.project = experiment
        self.dir = workspace.tracking_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ledger = self.dir / f"wandb-{run_id(experiment)}.json"

    def _logged_keys(self) -> set[str]:
        try:
            return set(json.loads(self.ledger.read_text()).get("logged", []))
        except (OSError, ValueError, AttributeError):
            return set()

    def _mark(self, key: str) -> None:
        atomic_write_json(self.ledger, {"project": self.project, "logged": sorted(self._logged_keys() | {key})})

    def _init(self, record: RunRecord, group: str | None, job_type: str):
        settings = self.wandb.Settings(silent=True, console="off", save_code=False, disable_git=True,
                                       x_disable_stats=True, x_disable_meta=True)
        with console.quiet_third_party():
            return self.wandb.init(project=self.project, dir=str(self.dir), id=run_id(record.key), resume="allow",
                                   name=record.name, group=group, job_type=job_type,
                                   config={**record.params, **{f"tag.{k}": v for k, v in record.all_tags().items()}},
                                   tags=[t[:64] for t in (group, job_type) if t], settings=settings)

    def parent(self, record: RunRecord) -> RunRecord:
        return record

    def logged(self, parent: RunRecord | None, keys: list[str]) -> set[str]:
        return self._logged_keys() & set(keys)

    def log(self, record: RunRecord, parent: RunRecord | None) -> None:
        group = parent.name if parent is not None else None
        run = self._init(record, group, record.tags.get(ROLE_TAG, "run"))
        with console.quiet_third_party():
            steps: dict[int, dict[str, float]] = {}
            for name, value, step in record.metrics:
                if step is None:
                    run.summary[name] = value
                else:
                    steps.setdefault(step, {})[name] = value
            for step in sorted(steps):
                run.log(steps[step], step=step)
            run.finish()
        self._mark(record.key)

    def attach(self, parent: RunRecord, record: RunRecord, files: list[Path]) -> None:
        run = self._init(record, record.name, "study")
        with console.quiet_third_party():
            for name, value, _ in record.metrics:
                run.summary[name] = value
            if files:
                artifact = self.wandb.Artifact(run_id(f"{record.name}-report"), type="report")
                for path in files:
                    artifact.add_file(str(path))
                run.log_artifact(artifact)
            run.finish()
        self._mark(record.key)

    def close(self) -> None:
        pass


class WandbTracker:
    name = "wandb"

    def open(self, settings: TrackingConfig, workspace: Workspace, experiment: str) -> Any:
        return WandbSession(settings, workspace, experiment)
