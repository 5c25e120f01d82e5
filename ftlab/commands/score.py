"""`ftlab score --task TASK --predictions FILE.jsonl`: a task's metrics from raw responses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ftlab.data.tasks import TASKS, custom_task
from ftlab.errors import FtlabError
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS, get_scorer
from ftlab.eval.scoring.metrics import ScoringOptions, sample_score_dict, score_responses
from ftlab.io import to_jsonable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True,
                        help="registered task (arc, boolq, squad_v2, openmath, synthetic-arith, ...) or an answer kind "
                             f"({', '.join(ANSWER_KINDS.names())})")
    parser.add_argument("--predictions", required=True, help="JSONL file, one {\"response\", \"answer\"} object per line")
    parser.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples for the accuracy interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rel-tol", type=float, default=None,
                        help="numeric answers: relative tolerance for non-integer golds (default: the task's "
                             "documented tolerance; integer golds always match exactly)")
    parser.add_argument("--abs-tol", type=float, default=None, help="numeric answers: absolute tolerance (default: the task's)")
    parser.add_argument("--labels", default=None, metavar="A,B,C",
                        help="choice answers: the option letters (default: the task's; for the bare kind, any single letter)")
    parser.add_argument("--samples", action="store_true", help="also print each line's extraction and correctness")


def task_of(task: str):
    """The registered task, or a stand-in with the kind's defaults for a bare answer kind."""
    if task in ANSWER_KINDS.names():
        return custom_task(task, task)
    return TASKS.get(task)  # unknown names raise with the valid list


def parse_labels(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    labels = tuple(part.strip().upper() for part in text.split(",") if part.strip())
    if len(labels) < 2 or any(len(x) != 1 or not x.isalpha() for x in labels) or len(set(labels)) != len(labels):
        raise FtlabError(f"--labels {text!r} must list two or more distinct option letters, e.g. A,B,C")
    return labels


def read_predictions(path: str) -> tuple[list, list]:
    p = Path(path)
    if not p.is_file():
        raise FtlabError(f"--predictions {p} not found; give a JSONL file of {{\"response\", \"answer\"}} lines")
    responses, golds = [], []
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FtlabError(f"--predictions {p} line {lineno} is not JSON ({exc.msg}); fix or remove it") from None
            if not isinstance(obj, dict) or "response" not in obj:
                raise FtlabError(f"--predictions {p} line {lineno} has no 'response' field")
            gold = obj.get("answer", obj.get("gold"))
            if gold is None and "answers" in obj:
                gold = obj["answers"]
            if gold is None:
                raise FtlabError(f"--predictions {p} line {lineno} has no 'answer' field")
            responses.append(obj["response"])
            golds.append(gold)
    if not responses:
        raise FtlabError(f"--predictions {p} has no lines; nothing to score")
    return responses, golds


def score_file(task: str, predictions: str, *, bootstrap_samples: int = 1000, seed: int = 0,
               rel_tol: float | None = None, abs_tol: float | None = None,
               labels: tuple[str, ...] | None = None) -> tuple[dict, list]:
    t = task_of(task)
    for flag, value in (("--rel-tol", rel_tol), ("--abs-tol", abs_tol)):
        if value is not None and value < 0:
            raise FtlabError(f"{flag} {value} must be >= 0")
    responses, golds = read_predictions(predictions)
    options = ScoringOptions.for_task(t, rel_tol=rel_tol, abs_tol=abs_tol, labels=labels or t.labels or None)
    scorer = get_scorer(t.answer_kind, options)
    try:
        scores, block = score_responses(scorer, responses, golds, bootstrap_samples=bootstrap_samples, seed=seed)
    except FtlabError as exc:
        raise FtlabError(f"--predictions {predictions} {exc}") from None
    block = {"task": t.name, "answer_kind": t.answer_kind, "scoring_version": scorer.version, **block}
    return block, [sample_score_dict(s) for s in scores]


def run(args: argparse.Namespace) -> int:
    block, samples = score_file(args.task, args.predictions, bootstrap_samples=args.bootstrap_samples,
                                seed=args.seed, rel_tol=args.rel_tol, abs_tol=args.abs_tol,
                                labels=parse_labels(args.labels))
    if args.samples:
        block["samples"] = samples
    print(json.dumps(to_jsonable(block), indent=2))
    return 0
