"""`ftlab datasets list | prepare | validate | show`."""

from __future__ import annotations

import argparse

from ftlab.paths import Workspace


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="registered tasks and where their data would come from")
    prep = sub.add_parser("prepare", help="write Datasets/train-*.parquet and test-*.parquet")
    prep.add_argument("--from", dest="from_dir", default=None, help="local folder with train-*/test-*.parquet (default: the hub)")
    prep.add_argument("--tasks", nargs="+", default=None, help="tasks to prepare (default: all)")
    prep.add_argument("--limit", type=int, default=None, help="keep only the first N rows of each split")
    val = sub.add_parser("validate", help="check a task's data or a custom file and report problems")
    val.add_argument("dataset", help="task name or data file")
    val.add_argument("--split", default="test", choices=["train", "test"])
    val.add_argument("--source-dir", default=None)
    show = sub.add_parser("show", help="print a few rendered examples with their targets")
    show.add_argument("dataset")
    show.add_argument("--split", default="test", choices=["train", "test"])
    show.add_argument("-n", type=int, default=3)
    show.add_argument("--source-dir", default=None)


def run(args: argparse.Namespace) -> int:
    ws = Workspace.default()
    if args.action == "list":
        from ftlab.data.loading import task_file  # lazy: ftlab.data.loading imports numpy
        from ftlab.data.tasks import TASKS  # lazy: ftlab.data.tasks imports numpy

        print(f"{'task':<16} {'answers':<8} {'train source':<44} doc")
        for name, t in TASKS.items():
            f = task_file(t, "train", ws)
            where = "generated" if t.generated else (str(f) if f else f"hub:{t.hub_id}")
            print(f"{name:<16} {t.answer_kind:<8} {where:<44} {t.doc}")
        return 0
    if args.action == "prepare":
        from ftlab.data.prepare import prepare_datasets  # lazy: ftlab.data.prepare imports numpy

        for r in prepare_datasets(args.tasks, ws, args.from_dir, args.limit):
            warn = f"  ({r['warnings']})" if r["warnings"] else ""
            print(f"{r['task']:<16} {r['split']:<5} {r['rows']:>6} rows -> {r['file']}{warn}")
        return 0
    from ftlab.data.loading import dataset_fingerprint, load_examples, resolve_task  # lazy: ftlab.data.loading imports numpy

    examples = load_examples(args.dataset, args.split, workspace=ws, source_dir=args.source_dir)
    task = resolve_task(args.dataset)
    if args.action == "validate":
        print(f"{task.name}: {len(examples)} usable rows, answer kind {task.answer_kind}, "
              f"fingerprint {dataset_fingerprint(examples)}")
        return 0
    from ftlab.data.prompts import build_messages, build_target  # lazy: ftlab.data.prompts imports numpy

    for ex in examples[: args.n]:
        print("-" * 60)
        for m in build_messages(task, ex):
            print(f"[{m['role']}] {m['content']}")
        print(f"[target] {build_target(task, ex)}")
    return 0
