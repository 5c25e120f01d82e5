"""A sweep: plan which models need an evaluation, then run those evaluations as jobs of the shared
job engine (ftlab.jobs: one scheduler for sweeps and studies), and summarise the outcomes.

Crash safety comes from the pieces, not from sweep state: nothing here is persisted except the
per-model error reports and the engine's ledger, so a sweep killed at any point is resumed by
simply running it again — the planner sees what is missing, incomplete or stale, and the
evaluator resumes from its samples.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ftlab.errors import FtlabError
from ftlab.jobs.backends import cuda_device_count, run_engine
from ftlab.jobs.engine import BLOCKED, DONE, Engine, EngineSettings, Job, Resources, job_id
from ftlab.jobs.engine import BUSY as ENGINE_BUSY
from ftlab.jobs.engine import FAILED as ENGINE_FAILED
from ftlab.jobs.kinds import EVALUATE, evaluation_data, mean_accuracy
from ftlab.jobs.locks import is_locked_by_other, lock_path
from ftlab.orchestrate.discovery import BUSY, EvalOptions, PlanItem, plan_sweep
from ftlab.paths import Workspace

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass
class SweepSettings:
    backend: str = "local"
    retry_failed: bool = False
    only: list[str] | None = None
    timeout_s: float | None = None
    threads: int | None = None  # torch/OMP threads per evaluation; None = backend's choice
    max_parallel: int | None = None  # evaluations in flight; None = 1 locally, what the cluster fits on Ray
    ray_address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    retries: int = EngineSettings.retries  # attempts the cluster lost that run again (EngineSettings.retries)

    def validate(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise FtlabError(f"--timeout {self.timeout_s} must be positive seconds")
        if self.threads is not None and self.threads <= 0:
            raise FtlabError(f"--threads {self.threads} must be >= 1")
        if self.max_parallel is not None and self.max_parallel <= 0:
            raise FtlabError(f"--max-parallel {self.max_parallel} must be >= 1")
        if self.num_cpus <= 0:
            raise FtlabError(f"--num-cpus {self.num_cpus} must be > 0")
        if self.num_gpus < 0:
            raise FtlabError(f"--num-gpus {self.num_gpus} must be >= 0")

    def engine_settings(self) -> EngineSettings:
        ray = self.backend == "ray"
        # Ray: threads follow the CPUs a task reserves, so co-located tasks do not oversubscribe.
        threads = self.threads or (max(1, int(self.num_cpus)) if ray else None)
        return EngineSettings(workers=self.max_parallel or (None if ray else 1), threads=threads,
                              timeout_s=self.timeout_s, retry_failed=True, retries=self.retries, backend=self.backend,
                              ray_address=self.ray_address, cwd=os.getcwd(),
                              # A model another sweep is evaluating is reported, not waited for.
                              wait_for_busy=False)


@dataclass
class Outcome:
    model: str
    reason: str
    detail: str
    status: str
    runtime_s: float = math.nan
    mean_accuracy: float = math.nan
    error: str | None = None


@dataclass
class SweepReport:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def evaluated(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == OK]

    def exit_code(self) -> int:
        # The number of failed models (0 = all good), capped below the shell's signal range.
        return min(len(self.failed), 100)


class Sweep:
    """Plans the models to evaluate and runs them through the job engine."""

    def __init__(self, workspace: Workspace, options: EvalOptions, settings: SweepSettings,
                 echo: Callable[[str], None] | None = None):
        settings.validate()
        self.workspace = workspace
        self.options = options
        self.settings = settings
        self.metrics_dir = workspace.metrics_dir
        self.report = SweepReport()
        self._echo = echo
        self._started = time.time()
        # Resolving once up front turns a config typo into one error instead of one per model.
        options.resolve()

    def plan(self) -> list[PlanItem]:
        items = plan_sweep(self.workspace, self.options, retry_failed=self.settings.retry_failed,
                           only=self.settings.only)
        for item in items:
            owner = is_locked_by_other(lock_path(self.metrics_dir, item.model)) if item.runs else None
            if owner is not None:
                item.detail = f"{item.reason}: {item.detail}; now being evaluated by {owner.describe()}"
                item.reason = BUSY
        return items

    def job(self, item: PlanItem) -> Job:
        data = evaluation_data(item.folder.name, self.options, retry_failed=self.settings.retry_failed,
                               since=self._started)
        # Locally an evaluation uses the GPU when there is one; on Ray it reserves --num-gpus.
        gpus = self.settings.num_gpus if self.settings.backend == "ray" else float(bool(cuda_device_count()))
        return Job(job_id(EVALUATE, data["options"], [item.folder.name]), EVALUATE, item.model, (), data,
                   Resources(gpus=gpus), {"label": item.model})  # CPUs: its threads (num_cpus on Ray)

    def run(self, items: list[PlanItem] | None = None) -> SweepReport:
        items = self.plan() if items is None else items
        todo = [i for i in items if i.runs]
        for item in items:
            if not item.runs:
                self.report.outcomes.append(Outcome(item.model, item.reason, item.detail, SKIPPED))
        log.info("%d of %d models need evaluation (backend %s)", len(todo), len(items), self.settings.backend)
        if not todo:
            return self.report
        jobs = {item.model: self.job(item) for item in todo}
        engine = Engine(list(jobs.values()), self.workspace, self.workspace.jobs_dir,
                        self.settings.engine_settings(), echo=self._echo)
        by_id = {job.id: item for item, job in zip(todo, jobs.values())}
        for o in run_engine(engine):
            item = by_id[o.job.id]
            if o.ran and o.state == DONE:
                self.report.outcomes.append(Outcome(item.model, item.reason, item.detail, OK, o.runtime_s,
                                                    mean_accuracy(self.workspace, item.model)))
            elif o.state == ENGINE_FAILED:
                self.report.outcomes.append(Outcome(item.model, item.reason, item.detail, FAILED, o.runtime_s,
                                                    error=o.detail))
            else:
                reason = BUSY if o.state == ENGINE_BUSY else item.reason
                detail = o.detail if o.state in (ENGINE_BUSY, BLOCKED) or not o.ran else item.detail
                self.report.outcomes.append(Outcome(item.model, reason, detail, SKIPPED))
        return self.report


def format_plan(items: list[PlanItem]) -> str:
    if not items:
        return "no model folders with training_metadata.json"
    width = max(len(i.model) for i in items)
    lines = [f"{'model':<{width}}  {'action':<6}  {'reason':<14}  detail"]
    for i in items:
        lines.append(f"{i.model:<{width}}  {'run' if i.runs else 'skip':<6}  {i.reason:<14}  {i.detail}")
    n = sum(i.runs for i in items)
    lines.append(f"{n} of {len(items)} models would be evaluated")
    return "\n".join(lines)


def format_summary(report: SweepReport) -> str:
    if not report.outcomes:
        return "no model folders with training_metadata.json"
    rows = sorted(report.outcomes, key=lambda o: ({FAILED: 0, OK: 1}.get(o.status, 2), o.model))
    width = max(len(o.model) for o in rows)
    lines = [f"{'model':<{width}}  {'result':<7}  {'reason':<14}  {'runtime_s':>9}  {'mean_acc':>8}  note"]
    for o in rows:
        runtime = "" if math.isnan(o.runtime_s) else f"{o.runtime_s:.1f}"
        acc = "" if math.isnan(o.mean_accuracy) else f"{o.mean_accuracy:.4f}"
        note = o.error if o.status == FAILED else ("" if o.status == OK else o.detail)
        lines.append(f"{o.model:<{width}}  {o.status:<7}  {o.reason:<14}  {runtime:>9}  {acc:>8}  {note or ''}")
    lines.append(f"{len(report.evaluated)} evaluated, {len(report.failed)} failed, "
                 f"{len(report.outcomes) - len(report.evaluated) - len(report.failed)} skipped")
    return "\n".join(lines)


def orchestrate(workspace: Workspace, options: EvalOptions | None = None, settings: SweepSettings | None = None,
                echo: Callable[[str], None] | None = None) -> SweepReport:
    """Library entry point: evaluates every model that needs it and returns the report."""
    return Sweep(workspace, options or EvalOptions(), settings or SweepSettings(), echo=echo).run()


__all__ = ["Sweep", "SweepSettings", "SweepReport", "Outcome", "orchestrate", "format_plan", "format_summary",
           "EvalOptions"]
