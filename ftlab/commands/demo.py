"""`ftlab demo`: the demo study (examples/demo-study.yaml) offline on the built-in SmolLM2-135M-Instruct.

base snapshot -> two LoRA ranks fine-tuned with two seeds each -> every model evaluated -> the
recipe-level verdict (each rank against the base and against the best, over seeds and items) in
Testing/studies/demo/. It is an ordinary study run: a rerun reuses every finished job (seconds),
`--fresh` deletes the demo's outputs first, `--quick` runs the 3-4 minute smoke study instead
(one rank, two seeds, each quantized to 8 bits).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ftlab.errors import FtlabError
from ftlab.jobs.engine import EngineSettings
from ftlab.paths import Workspace
from ftlab.study.run import execute, open_study, remove_outputs

DEMO_FILE = "demo-study.yaml"
QUICK_FILE = "demo-study-quick.yaml"


def study_file(quick: bool = False) -> Path:
    """The shipped demo study: in the wheel (`ftlab/examples/`) or beside the package in a checkout."""
    name = QUICK_FILE if quick else DEMO_FILE
    here = Path(__file__).resolve().parents[1]  # the ftlab package (this module is ftlab/commands/demo.py)
    for folder in (here / "examples", here.parent / "examples"):
        if (folder / name).is_file():
            return folder / name
    raise FtlabError(f"the demo study {name} is missing from this installation (looked in {here / 'examples'} "
                     f"and {here.parent / 'examples'}); reinstall ftlab")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help=f"the smoke study ({QUICK_FILE}: one recipe, 2 seeds, "
                                                         "12 steps, 24 questions; 3-4 minutes)")
    p.add_argument("--fresh", action="store_true", help="delete the demo study's models, metrics and report first")
    p.add_argument("--dry-run", action="store_true", help="print the plan (every job: done / to run / stale, why)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per job (default: all cores)")
    p.add_argument("--workers", type=int, default=None, help="jobs at once (default 1: on 2 cores one job with "
                                                            "both threads is fastest)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="study overrides, e.g. evaluate.limit=50 data_dir=../shared/datasets")


def run(args: argparse.Namespace) -> int:
    workspace = Workspace.at(getattr(args, "workdir", None))
    path = study_file(args.quick)
    study = open_study(path, workspace, args.overrides)
    if args.fresh and not args.dry_run:
        removed = remove_outputs(study)
        print(f"--fresh: removed {len(removed)} outputs of the demo study")
    print(f"demo: the study {path} ({len(study.graph.jobs)} jobs) in {workspace.root}; "
          f"copy it and run yours with `ftlab study run FILE`", flush=True)
    t0 = time.perf_counter()
    settings = EngineSettings(workers=args.workers, threads=args.threads or os.cpu_count(), cwd=os.getcwd())
    code = execute(study, settings, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"total {time.perf_counter() - t0:.0f} s; models in {workspace.models_dir}, "
              f"metrics in {workspace.metrics_dir}")
    return code
