"""`ftlab evaluate MODEL [--datasets ...] [--limit N] [--batch-size B] [--config FILE] [key=value ...]`
(also `Testing/02_TestModels.py`)."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os

from ftlab.cli import SUMMARY
from ftlab.config import EvalRunConfig, config_to_dict, load_config
from ftlab.env import set_threads
from ftlab.errors import FtlabError
from ftlab.paths import Workspace
from ftlab.tracking import trackers
from ftlab.tracking.base import ROLE_TAG, RunRecord, evaluation_metrics, flatten

log = logging.getLogger(__name__)


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", nargs="+", default=None, metavar="TASK",
                        help="tasks or data files (see `ftlab datasets list`; <task>:ll scores choice/yes-no tasks by "
                             "log-likelihood; `perplexity` or perplexity:<task> for held-out perplexity)")
    parser.add_argument("--limit", type=int, default=None, help="first N test rows of each task")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts generated together")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens (default: per task)")
    parser.add_argument("--config", default=None, help="YAML file with model:/eval: sections (EvalRunConfig)")
    parser.add_argument("--name", default=None, help="metrics file name (default: derived from MODEL)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: eval.threads, else all cores)")
    parser.add_argument("--print", dest="print_json", action="store_true", help="print the metrics document")
    parser.add_argument("--quiet", dest="eval_quiet", action="store_true", help="warnings and errors only")
    trackers.add_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="model folder, run name under Models/, hub id, built-in name or scratch:<preset>")
    _add_options(parser)
    # Options may follow key=value overrides (the orchestrator appends overrides last); argparse
    # cannot interleave positionals, so the tail is re-parsed in run().
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                        help="config overrides, e.g. eval.limit=20 model.dtype=fp32")


def _split_tail(args: argparse.Namespace) -> argparse.Namespace:
    tail = list(getattr(args, "overrides", None) or [])
    if any(t in ("-h", "--help") for t in tail):
        # `ftlab evaluate MODEL --help`: the tail parser below has no help of its own.

        full = argparse.ArgumentParser(prog="ftlab evaluate", description=SUMMARY["evaluate"])
        add_arguments(full)
        full.print_help()
        raise SystemExit(0)
    inner = argparse.ArgumentParser(prog="ftlab evaluate", add_help=False)
    _add_options(inner)
    inner.add_argument("overrides", nargs="*")
    try:
        parsed = inner.parse_intermixed_args(tail)
    except SystemExit:
        raise FtlabError(f"could not parse arguments {' '.join(tail)!r}; options are --datasets, --limit, --batch-size, "
                         "--max-new-tokens, --config, --name, --threads, --track, --track-uri, then key=value "
                         "overrides") from None
    for key, value in vars(parsed).items():
        if key != "overrides" and value is not None and value is not False:
            setattr(args, key, value)
    overrides = list(parsed.overrides)
    # `--datasets a b key=value`: nargs="+" swallows following overrides; a task name has no "=".
    if args.datasets:
        overrides = [d for d in args.datasets if "=" in d] + overrides
        args.datasets = [d for d in args.datasets if "=" not in d]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise FtlabError(f"unexpected argument {bad[0]!r}; overrides are key=value (e.g. eval.limit=20)")
    args.overrides = overrides
    return args


def build_config(args: argparse.Namespace):
    """EvalRunConfig from defaults < --config < key=value overrides < dedicated flags."""

    flags = list(args.overrides)
    if args.datasets:
        flags.append("eval.datasets=" + json.dumps(args.datasets))
    for attr, key in (("limit", "eval.limit"), ("batch_size", "eval.batch_size"),
                      ("max_new_tokens", "eval.max_new_tokens"), ("threads", "eval.threads")):
        if getattr(args, attr, None) is not None:
            flags.append(f"{key}={getattr(args, attr)}")
    flags.append(f"model.name={args.model}")
    return load_config(EvalRunConfig, args.config, flags + trackers.overrides(args))


def resolve_threads(configured: int | None) -> int | None:
    """eval.threads, else OMP_NUM_THREADS (the orchestrator gives each worker a budget that way),
    else None (all cores)."""
    if configured:
        return configured
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else None


def run(args: argparse.Namespace) -> int:
    from ftlab.eval.evaluator import evaluate, metrics_paths, model_file_name  # lazy: ftlab.eval.evaluator imports numpy

    args = _split_tail(args)
    if args.eval_quiet:
        logging.getLogger("ftlab").setLevel(logging.WARNING)
    cfg = build_config(args)
    set_threads(resolve_threads(cfg.eval.threads))
    ws = Workspace.at(getattr(args, "workdir", None))
    doc = evaluate(args.model, cfg, ws, model_name=args.name)
    json_path, _ = metrics_paths(ws, args.name or model_file_name(args.model))
    if args.print_json:
        print(json.dumps(doc, indent=2))
    else:
        from ftlab.eval.evaluator import expected_settings  # lazy: ftlab.eval.evaluator imports numpy

        requested = list(expected_settings(cfg, ws))
        for task in requested:
            block = doc["datasets"][task]
            m = block["metrics"]
            headline = m.get("accuracy", m.get("perplexity"))
            ci = (block.get("intervals") or {}).get("accuracy")
            extra = f" [95% CI {ci[0]:.3f}-{ci[1]:.3f}]" if ci and headline is not None else ""
            extra += f" format={block['format_success_rate']:.3f}" if block.get("format_success_rate") is not None else ""
            if block.get("cut_off_rate"):
                extra += f" cut_off={block['cut_off_rate']:.3f}"
            if m.get("acc_norm") is not None:  # log-likelihood scoring
                extra += f" acc_norm={m['acc_norm']:.4f}"
            sps = f" {block['samples_per_s']:.2f} samples/s" if block.get("samples_per_s") else ""
            kept = " (up to date, kept)" if str(block.get("evaluated_at") or "") < str(doc.get("started_at") or "") else ""
            print(f"{task:>22}: n={block['n']} {'accuracy' if 'accuracy' in m else 'perplexity'}="
                  f"{headline if headline is None else round(headline, 4)}{extra}{sps}{kept}")
        others = [t for t in doc["datasets"] if t not in requested]
        if others:
            print(f"{'':>22}  the document also holds {', '.join(others)}")
        print(f"metrics written to {json_path}")
    if cfg.tracking.on:
        name = json_path.name.removesuffix(".json")
        trackers.sync(cfg.tracking, ws, cfg.tracking.experiment or "ftlab-evaluate", parent=None,
                      children=[(evaluation_key(name, doc), lambda: evaluation_record(name, args.model, cfg, doc))])
    return 0


def evaluation_key(name: str, doc: dict) -> str:
    """An evaluation's run identity: the metrics file and when each of its tasks was scored, so a
    rerun that kept every task logs nothing new and one that scored a task again is a new run."""
    stamps = json.dumps({t: (b.get("settings_key"), b.get("evaluated_at")) for t, b in doc["datasets"].items()},
                        sort_keys=True)
    return f"evaluation-{hashlib.sha256(f'{name}|{stamps}'.encode()).hexdigest()[:16]}"


def evaluation_record(name: str, model: str, cfg: EvalRunConfig, doc: dict) -> RunRecord:
    """One evaluation as a run: the resolved config, every task's metrics and interval bounds."""
    tree = config_to_dict(cfg)
    tree.pop("tracking", None)
    return RunRecord(evaluation_key(name, doc), name, flatten(tree), evaluation_metrics(doc),
                     {ROLE_TAG: "evaluation", "model_folder": model, "metrics_file": f"{name}.json"})
