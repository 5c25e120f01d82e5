"""`ftlab study run FILE` / `ftlab study report FILE`: a grid of recipes from training to verdict."""

from __future__ import annotations

import argparse
import os

from ftlab.errors import FtlabError
from ftlab.jobs.backends import BACKENDS
from ftlab.jobs.engine import EngineSettings
from ftlab.paths import Workspace
from ftlab.study.run import execute, open_study, print_report, track_report
from ftlab.tracking import trackers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run every job that is not done, then write the report",
                         description="Runs every job of the study that is not done (crash-safe: run it again "
                                     "after any interruption), then writes the report. A study file with an "
                                     "adaptive: section runs in rounds that add seeds and items only to comparisons "
                                     "still open (docs/study.md).")
    run.add_argument("file", help="study YAML file (see examples/)")
    run.add_argument("--dry-run", action="store_true", help="print the plan (every job: done / to run / stale, why; adaptive: the rounds so far and the next)")
    run.add_argument("--backend", default="local", choices=BACKENDS.names(),
                     help="local: child processes on this machine; ray: a Ray task per job")
    run.add_argument("--workers", type=int, default=None,
                     help="jobs at once (default: 1 locally, what the cluster fits on Ray)")
    run.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / workers)")
    run.add_argument("--timeout", type=float, default=None, metavar="S", help="kill a job after S seconds (recorded as failed)")
    run.add_argument("--skip-failed", action="store_true", help="do not retry jobs that failed in an earlier run")
    run.add_argument("--retries", type=int, default=EngineSettings.retries, metavar="N",
                     help="run a job whose attempt the cluster lost (node died, worker killed) again, up to N times "
                          f"(default {EngineSettings.retries}); a job that fails on its own is never retried")
    run.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="existing Ray cluster (auto, ray://host:10001); default: a local Ray started here")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    trackers.add_arguments(run)
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="study file overrides, e.g. evaluate.limit=50")
    plan = sub.add_parser("plan", help="power of the planned design for the difference that matters, and what it takes",
                          description="For analysis.min_difference, the power of the planned seeds x items, the "
                                      "items needed for the asked power at several seed counts, and their compute "
                                      "(from measured job times). Variance from --from, else this study's finished "
                                      "results (2+ seeds), else analysis.expected_*.")
    plan.add_argument("file", help="study YAML file")
    plan.add_argument("--from", dest="earlier", default=None, metavar="STUDY",
                      help="an earlier study file whose finished results (2+ seeds) give the variance and job times")
    plan.add_argument("--items", type=int, default=None, help="items per task (default: evaluate.limit)")
    plan.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="study file overrides, e.g. analysis.min_difference=0.03")
    rep = sub.add_parser("report", help="write the verdict from the finished evaluations",
                         description="Writes Testing/studies/<name>/ (report.md, report.html, frame.parquet/csv).")
    rep.add_argument("file", help="study YAML file")
    trackers.add_arguments(rep)
    rep.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="study file overrides")


def run(args: argparse.Namespace) -> int:
    workspace = Workspace.at(getattr(args, "workdir", None))
    study = open_study(args.file, workspace, [*args.overrides, *trackers.overrides(args)])
    if args.study_command == "report":
        if study.spec.adaptive.on:
            from ftlab.study import adaptive  # lazy: ftlab.study.adaptive imports pandas and scipy

            adaptive.print_report(study)
        else:
            print_report(study)
        track_report(study)
        return 0
    if args.study_command == "plan":
        from ftlab.study.plan import plan_text  # lazy: ftlab.study.plan imports numpy

        if args.items is not None and args.items < 2:
            raise FtlabError(f"--items {args.items}: give at least 2 items per task")
        earlier = open_study(args.earlier, workspace) if args.earlier else None
        print(plan_text(study, earlier, args.items))
        return 0
    settings = EngineSettings(workers=args.workers, threads=args.threads, timeout_s=args.timeout,
                              retry_failed=not args.skip_failed, retries=args.retries, backend=args.backend,
                              ray_address=args.ray_address, cwd=os.getcwd())
    if study.spec.adaptive.on:
        from ftlab.study import adaptive  # lazy: ftlab.study.adaptive imports pandas and scipy

        return adaptive.execute(study, settings, dry_run_=args.dry_run, report=not args.no_report)
    return execute(study, settings, dry_run=args.dry_run, report=not args.no_report)
