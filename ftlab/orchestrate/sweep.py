"""A sweep: plan, claim each model under its lock, evaluate it through a backend, record outcomes.

Crash safety comes from the pieces, not from sweep state: nothing here is persisted except the
per-model error reports, so a sweep killed at any point is resumed by simply running it again —
the planner sees what is missing, incomplete or stale, and the evaluator resumes from its samples.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from ftlab.env import now_iso
from ftlab.errors import FtlabError
from ftlab.io import atomic_write_json, read_json
from ftlab.orchestrate.discovery import FAILED as FAILED_REASON
from ftlab.orchestrate.discovery import (
    BUSY, FAILED_EARLIER, RUN_REASONS, EvalOptions, PlanItem, assess, error_path, model_ref_for, plan_sweep,
)
from ftlab.jobs.locks import JobLock, is_locked_by_other, lock_path
from ftlab.orchestrate.runner import EvalJob, JobResult
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
    max_parallel: int | None = None  # ray: evaluations in flight; None = what the cluster fits
    ray_address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0

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


def _mean_accuracy(workspace: Workspace, model: str) -> float:
    from ftlab.eval.evaluator import metrics_paths

    with contextlib.suppress(FtlabError, AttributeError, TypeError):
        doc = read_json(metrics_paths(workspace, model)[0], "metrics file")
        value = (doc.get("summary") or {}).get("mean_accuracy")
        if isinstance(value, (int, float)):
            return float(value)
    return math.nan


class Sweep:
    """Backends call `claim(item)` before starting a model and `finish(job, result)` after."""

    def __init__(self, workspace: Workspace, options: EvalOptions, settings: SweepSettings,
                 echo: Callable[[str], None] | None = None):
        settings.validate()
        self.workspace = workspace
        self.options = options
        self.settings = settings
        self.locks_dir = workspace.metrics_dir / ".locks"
        self.report = SweepReport()
        self._held: dict[str, JobLock] = {}
        self._items: dict[str, PlanItem] = {}
        self._echo = echo
        self._bar = None
        self._started = time.time()
        # Resolving once up front turns a config typo into one error instead of one per model.
        options.resolve()

    # -- planning --------------------------------------------------------------------------

    def plan(self) -> list[PlanItem]:
        items = plan_sweep(self.workspace, self.options, retry_failed=self.settings.retry_failed,
                           only=self.settings.only)
        for item in items:
            owner = is_locked_by_other(lock_path(self.locks_dir, item.model)) if item.runs else None
            if owner is not None:
                item.detail = f"{item.reason}: {item.detail}; now being evaluated by {owner.describe()}"
                item.reason = BUSY
        return items

    # -- the protocol backends use ---------------------------------------------------------

    def claim(self, item: PlanItem) -> EvalJob | None:
        """Locks the model and re-checks it; None when another orchestrator has it or finished it."""
        lock = JobLock(lock_path(self.locks_dir, item.model))
        if not lock.acquire():
            owner = lock.owner()
            self._record(Outcome(item.model, BUSY, f"locked by {owner.describe() if owner else 'another orchestrator'}", SKIPPED))
            return None
        try:
            # Between planning and now another orchestrator may have finished this model.
            fresh = assess(self.workspace, item.folder, self.options.resolve(model_ref_for(item.folder)),
                           retry_failed=self.settings.retry_failed)
        except BaseException:
            lock.release()
            raise
        if fresh.reason == FAILED_REASON and self._failed_since_start(item.model):
            # --retry-failed retries failures from before this sweep; one another orchestrator
            # recorded meanwhile has just been tried with the same config.
            fresh.reason, fresh.detail = FAILED_EARLIER, "failed again in a concurrent sweep"
        if fresh.reason not in RUN_REASONS:
            lock.release()
            self._record(Outcome(item.model, fresh.reason, f"{fresh.detail} (done meanwhile)", SKIPPED))
            return None
        self._held[item.model] = lock
        self._items[item.model] = fresh
        return EvalJob(
            model=item.model, folder=model_ref_for(item.folder), workdir=str(self.workspace.root),
            eval_args=self.options.cli_args(), expected=fresh.expected,
            threads=self.settings.threads, timeout_s=self.settings.timeout_s, cwd=os.getcwd(),
        )

    def _failed_since_start(self, model: str) -> bool:
        try:
            return error_path(self.workspace, model).stat().st_mtime >= self._started
        except FileNotFoundError:
            return False

    def finish(self, job: EvalJob, result: JobResult) -> None:
        item = self._items.pop(job.model)
        try:
            err = error_path(self.workspace, job.model)
            if result.ok:
                with contextlib.suppress(FileNotFoundError):
                    err.unlink()
                outcome = Outcome(job.model, item.reason, item.detail, OK, result.runtime_s,
                                  _mean_accuracy(self.workspace, job.model))
            else:
                atomic_write_json(err, {
                    "model": job.model, "error": result.error, "exit_code": result.returncode,
                    "traceback_tail": result.output_tail, "time": now_iso(), "runtime_s": round(result.runtime_s, 2),
                    "host": result.host or socket.gethostname(), "request_hash": job.request_hash,
                    "command": job.command(),
                })
                outcome = Outcome(job.model, item.reason, item.detail, FAILED, result.runtime_s, error=result.error)
        finally:
            lock = self._held.pop(job.model, None)
            if lock is not None:
                lock.release()
        self._record(outcome)

    def release_all(self) -> None:
        for lock in self._held.values():
            lock.release()
        self._held.clear()

    # -- output ----------------------------------------------------------------------------

    def _write(self, line: str) -> None:
        if self._echo is not None:
            self._echo(line)
        elif self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def _record(self, outcome: Outcome) -> None:
        self.report.outcomes.append(outcome)
        if outcome.status == OK:
            acc = "" if math.isnan(outcome.mean_accuracy) else f"  mean accuracy {outcome.mean_accuracy:.4f}"
            self._write(f"done    {outcome.model}  ({outcome.reason}, {outcome.runtime_s:.1f} s){acc}")
        elif outcome.status == FAILED:
            self._write(f"FAILED  {outcome.model}  ({outcome.reason}, {outcome.runtime_s:.1f} s): {outcome.error}")
        else:
            self._write(f"skip    {outcome.model}  ({outcome.reason}: {outcome.detail})")
        # Only planned-to-run models reach here (plan-time skips are appended directly), so the
        # bar also advances for one found busy or finished meanwhile and always reaches 100%.
        if self._bar is not None:
            self._bar.update(1)

    # -- the whole sweep -------------------------------------------------------------------

    def run(self, items: list[PlanItem] | None = None) -> SweepReport:
        from tqdm.auto import tqdm

        from ftlab.orchestrate.backends import BACKENDS

        backend = BACKENDS.get(self.settings.backend)
        items = self.plan() if items is None else items
        todo = [i for i in items if i.runs]
        for item in items:
            if not item.runs:
                self.report.outcomes.append(Outcome(item.model, item.reason, item.detail, SKIPPED))
        log.info("%d of %d models need evaluation (backend %s)", len(todo), len(items), self.settings.backend)
        self._bar = tqdm(total=len(todo), desc="sweep", unit="model", file=sys.stderr, dynamic_ncols=True,
                         disable=None)
        try:
            if todo:
                backend(self, todo)
        finally:
            self.release_all()
            self._bar.close()
            self._bar = None
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
