"""`ftlab study run|report`: resolve the study file -> build its job graph -> run what is not done
(local processes or Ray) -> collect the results -> write the verdict under Testing/studies/<name>/."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ftlab.errors import FtlabError
from ftlab.io import atomic_write_json
from ftlab.jobs.backends import run_engine
from ftlab.jobs.engine import (
    BLOCKED,
    BUSY,
    DONE,
    FAILED,
    FAILED_EARLIER,
    RUNS,
    STALE,
    TODO,
    Engine,
    EngineSettings,
    Outcome,
    PlanRow,
    Resources,
)
from ftlab.jobs.kinds import EVALUATE, config_path, jobs_dir
from ftlab.paths import Workspace
from ftlab.study.graph import StudyGraph, build_graph
from ftlab.study.rounds import current_design
from ftlab.study.spec import Recipe, StudySpec, baseline_recipe, load_study, spec_summary
from ftlab.study.tracking import StudyTracker, study_tracker, track_study

log = logging.getLogger(__name__)
ONE_SEED_WARNING = ("one seed per recipe (train.seeds): the verdict will compare trained models on these items, not "
                    "recipes; recipe-level claims need at least 2 seeds per recipe")


@dataclass
class Study:
    path: Path
    spec: StudySpec
    recipes: list[Recipe]
    graph: StudyGraph
    workspace: Workspace
    tracker: StudyTracker | None = None  # the experiment tracker's sync, made on first use (`tracking:`)

    @property
    def folder(self) -> Path:
        return self.workspace.studies_dir / self.spec.name

    def engine(self, settings: EngineSettings | None = None, echo: Callable[[str], None] | None = None) -> Engine:
        live = study_tracker(self)
        return Engine(self.graph.jobs, self.workspace, jobs_dir(self.workspace), settings, echo=echo,
                      on_done=live.job_done if live is not None else None)


def open_study(path: str | Path, workspace: Workspace, overrides: list[str] = ()) -> Study:
    """The study with its job graph; an adaptive study's graph is its latest round's design."""
    spec, recipes = load_study(path, list(overrides))
    design = current_design(workspace.studies_dir / spec.name, spec, recipes) if spec.adaptive.on else None
    return Study(Path(path), spec, recipes, build_graph(spec, recipes, workspace, design), workspace)


# ---------------------------------------------------------------------------------------------
# The plan


def format_plan(study: Study, rows: list[PlanRow]) -> str:
    counts = study.graph.counts()
    states: dict[str, int] = {}
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
    head = (f"study {study.spec.name}: {len(rows)} jobs ({kinds}); "
            + ", ".join(f"{states.get(s, 0)} {s}" for s in (DONE, TODO, STALE, FAILED_EARLIER, BUSY) if states.get(s) or s in (DONE, TODO, STALE)))
    width = max([len(r.job.name) for r in rows] + [6])
    lines = [head]
    reserved = {job.kind: job.resources for job in study.graph.jobs}
    if any(res != Resources() for res in reserved.values()):  # GPUs or a resources: section
        lines.append("each job reserves (N: --threads): " + "; ".join(f"{kind} {res.describe('N')}"
                                                                       for kind, res in reserved.items()))
    lines.append(f"{'state':<14}  {'kind':<8}  {'output':<{width}}  recipe / why")
    for r in rows:
        info = r.job.info
        who = info.get("recipe", "")
        if info.get("seed") is not None:
            who += f", seed {info['seed']}"
        if info.get("quant") not in (None, "none"):
            who += f", {info['quant']}"
        lines.append(f"{r.state:<14}  {r.job.kind:<8}  {r.job.name:<{width}}  [{who}] {r.why}")
    todo = sum(1 for r in rows if r.state in RUNS or r.state == BUSY)
    lines.append(f"{todo} of {len(rows)} jobs would run")
    return "\n".join(lines)


def format_outcomes(outcomes: list[Outcome]) -> str:
    ran = [o for o in outcomes if o.ran]
    failed = [o for o in outcomes if o.state in (FAILED, FAILED_EARLIER)]
    blocked = [o for o in outcomes if o.state == BLOCKED]
    done = [o for o in outcomes if o.state == DONE and not o.ran]
    lines = [f"{sum(o.state == DONE for o in ran)} jobs ran, {len(done)} were already done, "
             f"{len(failed)} failed, {len(blocked)} skipped"]
    for o in failed:
        lines.append(f"  FAILED {o.job.label}: {o.detail}")
    for o in blocked:
        lines.append(f"  skipped {o.job.label}: {o.detail}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Running and reporting


def run_study(study: Study, settings: EngineSettings, echo: Callable[[str], None] | None = None) -> list[Outcome]:
    atomic_write_json(study.folder / "plan.json", {
        "study": spec_summary(study.spec), "file": str(study.path.resolve()),
        "jobs": [{"id": j.id, "kind": j.kind, "name": j.name, "deps": list(j.deps), "info": j.info}
                 for j in study.graph.jobs],
    })
    return run_engine(study.engine(settings, echo))


def finished_results(study: Study, *, require: bool = True):
    """(samples, models, evaluations finished) of the study's current evaluations; with `require`,
    none finished is an FtlabError saying how to get them."""
    from ftlab.study.collect import collect  # lazy: ftlab.study.collect imports pandas

    engine = study.engine()
    states = {j.id: engine.status(j).state for j in study.graph.jobs if j.kind == "evaluate"}
    finished = [study.graph.evaluations[i] for i, state in states.items() if state == DONE]
    if not finished:
        if not require:
            return None, None, 0
        stale = sum(state == STALE for state in states.values())
        raise FtlabError(f"study {study.spec.name} has no current evaluation yet ({len(states)} planned"
                         + (f", {stale} stale" if stale else "") + f"); run `ftlab study run {study.path}`")
    samples, models = collect(study.workspace, finished, list(study.spec.evaluate.datasets))
    return samples, models, len(finished)


def analysis_settings(study: Study):
    """The study file's analysis settings with the baseline's label."""

    baseline = baseline_recipe(study.spec, study.recipes)
    return replace(study.spec.analysis, baseline="base" if baseline is None else baseline.label)


def report_study(study: Study, extra_blocks: list[tuple] = ()) -> tuple[dict, str]:
    """Writes the verdict from the finished evaluations; returns (written paths, verdict text)."""
    from ftlab.study.analysis import analyze_study  # lazy: ftlab.study.analysis imports numpy
    from ftlab.study.report import write_analysis  # lazy: ftlab.study.report imports pandas
    from ftlab.study.verdict import verdict_text  # lazy: ftlab.study.verdict imports pandas

    samples, models, finished = finished_results(study)
    analysis = analyze_study(samples, models, analysis_settings(study))
    total = sum(1 for j in study.graph.jobs if j.kind == "evaluate")
    summary = {"file": str(study.path), "evaluations_finished": finished, "evaluations_planned": total,
               "recipes": [r.label for r in study.recipes], "seeds": study.spec.train.seeds,
               "quant_variants": study.spec.quantize.variants, "tasks": study.spec.evaluate.datasets}
    paths = write_analysis(analysis, study.folder, title=f"Study {study.spec.name}", study_summary=summary,
                           extra_blocks=list(extra_blocks))
    return paths, verdict_text(analysis.verdicts)


def print_report(study: Study) -> None:
    paths, verdict = report_study(study)
    print(verdict)
    print(f"report: {paths['report.html']}")


def track_report(study: Study) -> None:
    """After `study report`: the study's parent run gets the rewritten report and tables, and its
    finished jobs without a run yet are logged (nothing when tracking is off; an outage is one
    warning line)."""
    if study.spec.tracking.on:
        track_study(study, [Outcome(row.job, DONE) for row in study.engine().plan() if row.state == DONE])


def execute(study: Study, settings: EngineSettings, *, dry_run: bool = False, report: bool = True) -> int:
    """`study run`: the plan (dry run), or every job that is not done, then the verdict. Returns
    the exit code: the number of jobs that failed or were skipped (capped at 100)."""
    settings.validate()
    if dry_run:
        print(format_plan(study, study.engine(settings).plan()))
        if len(study.spec.train.seeds) < 2:
            print(f"warning: {ONE_SEED_WARNING}")
        return 0
    return finish(study, run_study(study, settings), print_report if report else None)


def finish(study: Study, outcomes: list[Outcome], reporter: Callable[[Study], None] | None) -> int:
    """What every study run ends with: the outcomes, the report (unless None), the exit code (the
    number of jobs that failed or were skipped, capped at 100)."""
    print(format_outcomes(outcomes))
    if reporter is not None:
        try:
            reporter(study)
        except FtlabError as exc:  # the jobs' results stand; say why there is no report
            print(f"no report: {exc}")
    track_study(study, outcomes)  # after the report, its artifacts; a tracker outage is one warning line
    return min(sum(o.state != DONE for o in outcomes), 100)


def remove_outputs(study: Study) -> list[Path]:
    """Deletes what this study's jobs built (model folders, metrics, job records) and its report
    folder, so the next run starts over; other studies' and hand-made outputs stay. Returns the
    paths removed."""
    ws = study.workspace
    ledger = study.engine().ledger
    removed: list[Path] = []
    for job in study.graph.jobs:
        paths = [ledger.path(job.id), config_path(ws, job)]
        if job.kind == EVALUATE:
            paths += list(ws.metrics_files(job.name).all())  # the requests cache too: a fresh start asks again
        else:
            paths.append(ws.models_dir / job.name)
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            removed.append(path)
    if study.folder.exists():
        shutil.rmtree(study.folder)
        removed.append(study.folder)
    return removed
