"""A study in an experiment tracker (`tracking:` in the study file, or `ftlab study run --track`):
the study is a parent run with the verdict's tables and report.html as artifacts; each finished job
is a child run whose params are the job's resolved config, whose metrics are its training curve or
its task metrics with their interval bounds, and whose tags are the job id, the model folder and
the study. Logged by the driver once the jobs ran (`ftlab.tracking.trackers.sync`), so a tracker
outage never touches a job, and a job's run is found by its id, so a rerun adds none twice."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable

from ftlab.errors import FtlabError
from ftlab.io import read_json
from ftlab.jobs.engine import DONE, Job, Outcome
from ftlab.orchestrate.discovery import metrics_name
from ftlab.schema import load_training_metadata
from ftlab.study.spec import spec_summary
from ftlab.tracking.base import ROLE_TAG, RunRecord, curve_metrics, evaluation_metrics, flatten, result_metrics
from ftlab.tracking.trackers import Sync, Synced

if TYPE_CHECKING:
    from ftlab.study.run import Study

STUDY_ROLE = "study"
ARTIFACT_SUFFIXES = (".html", ".md", ".csv")  # report.html, report.md and the verdict's tables


def _model_folder(study: Study, job: Job):
    return study.workspace.models_dir / (job.data["model"] if job.kind == "evaluate" else job.name)


def _tags(study: Study, job: Job) -> dict[str, str]:
    folder = _model_folder(study, job)
    tags = {"job_id": job.id, ROLE_TAG: job.kind, "study": study.spec.name,
            "model_folder": str(folder.relative_to(study.workspace.root))}
    for key in ("recipe", "seed", "quant"):
        if job.info.get(key) is not None:
            tags[key] = str(job.info[key])
    return tags


def _model_record(study: Study, job: Job) -> RunRecord:
    """A snapshot, train or quantize job: its config; its curve (log_history.json) and results."""
    folder = _model_folder(study, job)
    meta = load_training_metadata(folder, required=False) or {}
    metrics = result_metrics(meta.get("results") if isinstance(meta.get("results"), dict) else None)
    with contextlib.suppress(FtlabError):
        history = read_json(folder / "log_history.json", "training log") if (folder / "log_history.json").is_file() else []
        metrics = curve_metrics(history if isinstance(history, list) else []) + metrics
    return RunRecord(job.id, job.name, flatten(job.data.get("config") or {}), metrics, _tags(study, job))


def _evaluation_record(study: Study, job: Job) -> RunRecord:
    """An evaluate job: its options; every task's metrics and interval bounds."""
    from ftlab.eval.evaluator import metrics_paths  # lazy: ftlab.eval.evaluator imports numpy

    folder = _model_folder(study, job)
    doc = read_json(metrics_paths(study.workspace, metrics_name(folder))[0], "metrics file")
    params = {"model": job.data["model"], **flatten(job.data.get("options") or {}, "eval")}
    return RunRecord(job.id, f"evaluate {job.data['model']}", params, evaluation_metrics(doc), _tags(study, job))


RECORDS: dict[str, Callable] = {"snapshot": _model_record, "train": _model_record, "quantize": _model_record,
                                "evaluate": _evaluation_record}


def study_record(study: Study) -> RunRecord:
    """The parent run: the study file's resolved settings as params."""
    return RunRecord(f"study:{study.spec.name}", study.spec.name, flatten(spec_summary(study.spec)), [],
                     {ROLE_TAG: STUDY_ROLE, "study": study.spec.name, "study_file": str(study.path)})


class StudyTracker:
    """The study's sync with its tracker over one `study run`: each job is logged as the driver
    sees it finish, then `track_study` logs whatever is still missing and the report."""

    def __init__(self, study: Study):
        settings = study.spec.tracking
        self.study = study
        self.sync = Sync(settings, study.workspace, settings.experiment or study.spec.name, study_record(study))

    def job_done(self, job: Job) -> None:
        if job.kind in RECORDS:
            self.sync.log(job.id, lambda: RECORDS[job.kind](self.study, job))


def study_tracker(study: Study) -> StudyTracker | None:
    """The study's tracker sync (one per Study), or None when tracking is off."""
    if not study.spec.tracking.on:
        return None
    if study.tracker is None:
        study.tracker = StudyTracker(study)
    return study.tracker


def track_study(study: Study, outcomes: list[Outcome]) -> Synced | None:
    """Logs the study and its finished jobs that have no run yet (nothing when tracking is off)."""
    live = study_tracker(study)
    if live is None:
        return None
    done = [o.job for o in outcomes if o.state == DONE and o.job.kind in RECORDS]
    files = sorted(p for p in study.folder.glob("*") if p.suffix in ARTIFACT_SUFFIXES) if study.folder.is_dir() else []
    return live.sync.finish([(job.id, lambda job=job: RECORDS[job.kind](study, job)) for job in done], files)
