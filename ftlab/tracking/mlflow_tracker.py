"""MLflow: a study is a parent run and each job a child run (tag `mlflow.parentRunId`), in the
experiment named by `tracking.experiment`. Without `tracking.uri` the store is a SQLite file in
the workspace (`Testing/tracking/mlflow.db`, artifacts beside it); with one, a tracking server.

A run is found again by its `ftlab_key` tag and counts as logged once its `ftlab_complete` tag is
set (its last write); a run left incomplete by an outage is deleted and logged again."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ftlab import console
from ftlab.config import TrackingConfig
from ftlab.paths import Workspace
from ftlab.tracking.base import KEY_TAG, ROLE_TAG, RunRecord

COMPLETE_TAG = "ftlab_complete"
PARENT_TAG = "mlflow.parentRunId"
PARAM_CHARS = 500  # what every MLflow server version accepts
# A server that is down answers at once instead of after MLflow's retries with backoff (minutes).
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "urllib3")


def local_store(workspace: Workspace) -> str:
    """The embedded store's URI (what `mlflow ui --backend-store-uri` opens)."""
    return f"sqlite:///{workspace.tracking_dir / 'mlflow.db'}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class MlflowSession:
    def __init__(self, settings: TrackingConfig, workspace: Workspace, experiment: str):
        for name, value in _CLIENT_ENV.items():
            os.environ.setdefault(name, value)
        with console.quiet_third_party():
            from mlflow.entities import Metric, Param  # lazy: mlflow takes seconds to import; only --track needs it
            from mlflow.tracking import MlflowClient  # lazy: as above
        if not console.VERBOSE:
            for name in _LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
        self._metric, self._param = Metric, Param
        local = not settings.uri
        if local:
            workspace.tracking_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=settings.uri or local_store(workspace))
        with console.quiet_third_party():
            found = self.client.get_experiment_by_name(experiment)
            if found is not None:
                self.experiment_id = found.experiment_id
            else:
                where = (workspace.tracking_dir / "mlflow-artifacts" / experiment).as_uri() if local else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=where)

    def _search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def parent(self, record: RunRecord) -> str:
        found = [r for r in self._search(f"tags.`{KEY_TAG}` = '{_quote(record.key)}'")
                 if r.data.tags.get(ROLE_TAG) == record.tags.get(ROLE_TAG)]
        if found:
            return sorted(found, key=lambda r: r.info.start_time)[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=record.name, tags=record.all_tags())
        return run.info.run_id

    def logged(self, parent: str | None, keys: list[str]) -> set[str]:
        wanted = set(keys)
        if parent is not None:
            runs = self._search(f"tags.`{PARENT_TAG}` = '{_quote(parent)}'")
        else:
            runs = [r for k in wanted for r in self._search(f"tags.`{KEY_TAG}` = '{_quote(k)}'")]
        done = set()
        for run in runs:
            key = run.data.tags.get(KEY_TAG)
            if key not in wanted:
                continue
            if run.data.tags.get(COMPLETE_TAG) == "1" and key not in done:
                done.add(key)
            else:  # cut off by an outage, or a second copy: it is logged again
                self.client.delete_run(run.info.run_id)
        return done

    def log(self, record: RunRecord, parent: str | None) -> None:
        tags = record.all_tags() | ({PARENT_TAG: parent} if parent else {})
        run_id = self.client.create_run(self.experiment_id, run_name=record.name, tags=tags).info.run_id
        self._write(run_id, record)
        self.client.set_tag(run_id, COMPLETE_TAG, "1")
        self.client.set_terminated(run_id)

    def _write(self, run_id: str, record: RunRecord, params: bool = True) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(name, value, now, step or 0) for name, value, step in record.metrics]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        if params:
            items = [self._param(k[:250], str(v)[:PARAM_CHARS]) for k, v in record.params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i:i + 100])

    def attach(self, parent: str, record: RunRecord, files: list[Path]) -> None:
        run = self.client.get_run(parent)
        if not run.data.params:  # params are write-once in MLflow: the first sync sets them
            self._write(parent, record)
        for path in files:
            self.client.log_artifact(parent, str(path))
        self.client.set_tag(parent, COMPLETE_TAG, "1")
        self.client.set_terminated(parent)

    def close(self) -> None:
        pass


class MlflowTracker:
    name = "mlflow"

    def open(self, settings: TrackingConfig, workspace: Workspace, experiment: str) -> Any:
        return MlflowSession(settings, workspace, experiment)
