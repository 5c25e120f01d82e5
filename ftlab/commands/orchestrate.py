"""`ftlab orchestrate`: evaluate every model under Models/ that needs it, each in its own process."""

from __future__ import annotations

import argparse
import logging

from ftlab.errors import FtlabError
from ftlab.jobs.backends import BACKENDS
from ftlab.jobs.engine import EngineSettings
from ftlab.orchestrate.discovery import EvalOptions
from ftlab.orchestrate.sweep import Sweep, SweepSettings, format_plan, format_summary
from ftlab.paths import Workspace

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ev = parser.add_argument_group("evaluation options (as for `ftlab evaluate`)")
    ev.add_argument("--datasets", nargs="+", metavar="TASK", help="tasks to evaluate (default: the config's)")
    ev.add_argument("--limit", type=int, metavar="N", help="only the first N test rows per task")
    ev.add_argument("--batch-size", type=int, metavar="N", help="prompts generated together")
    ev.add_argument("--max-new-tokens", type=int, metavar="N", help="cap on generated tokens (default: per task)")
    ev.add_argument("--config", metavar="YAML", help="evaluation config file")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. eval.max_new_tokens=64")
    sw = parser.add_argument_group("sweep")
    sw.add_argument("--dry-run", action="store_true", help="print the plan (model, action, reason) and exit")
    sw.add_argument("--retry-failed", action="store_true", help="also re-run models whose last attempt failed")
    sw.add_argument("--model", action="append", metavar="NAME", help="only these model folders (repeat)")
    sw.add_argument("--timeout", type=float, metavar="S", help="kill an evaluation after S seconds (recorded as failed)")
    sw.add_argument("--threads", type=int, metavar="N",
                    help="CPU threads per evaluation (default: $OMP_NUM_THREADS for local, --num-cpus for ray)")
    sw.add_argument("--backend", default="local", choices=BACKENDS.names(),
                    help="local: one after another here; ray: a Ray task per model")
    ray = parser.add_argument_group("ray backend")
    ray.add_argument("--ray-address", metavar="ADDR", help="existing Ray cluster (e.g. auto or ray://host:10001); default: start a local Ray")
    ray.add_argument("--num-cpus", type=float, default=1.0, help="CPUs each evaluation task reserves (default 1)")
    ray.add_argument("--num-gpus", type=float, default=0.0, help="GPUs each evaluation task reserves (default 0)")
    ray.add_argument("--max-parallel", type=int, metavar="N", help="evaluations in flight at once (default: what the cluster fits)")
    ray.add_argument("--retries", type=int, default=EngineSettings.retries, metavar="N",
                     help="run an evaluation the cluster lost (node died, worker killed) again, up to N times "
                          f"(default {EngineSettings.retries}); one that fails on its own is not retried")


def _split_overrides(args: argparse.Namespace) -> tuple[list[str] | None, list[str]]:
    """`--datasets a b key=value`: nargs="+" swallows following overrides; a task has no "="."""
    overrides = list(args.overrides or [])
    datasets = args.datasets
    if datasets:
        overrides = [d for d in datasets if "=" in d] + overrides
        datasets = [d for d in datasets if "=" not in d] or None
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise FtlabError(f"unexpected argument {bad[0]!r}; overrides are key=value (e.g. eval.max_new_tokens=64)")
    return datasets, overrides


def run(args: argparse.Namespace) -> int:
    ws = Workspace.at(getattr(args, "workdir", None))
    datasets, overrides = _split_overrides(args)
    options = EvalOptions(datasets=datasets, limit=args.limit, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, config=args.config, overrides=overrides)
    settings = SweepSettings(
        backend=args.backend, retry_failed=args.retry_failed, only=args.model, timeout_s=args.timeout,
        threads=args.threads, max_parallel=args.max_parallel, ray_address=args.ray_address,
        num_cpus=args.num_cpus, num_gpus=args.num_gpus, retries=args.retries,
    )
    sweep = Sweep(ws, options, settings)
    items = sweep.plan()
    if args.dry_run:
        print(format_plan(items))
        return 0
    report = sweep.run(items)
    print()
    print(format_summary(report))
    return report.exit_code()
