"""`ftlab score --task TASK --predictions FILE.jsonl`: a task's metrics from raw responses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ftlab.errors import FtlabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True,
                        help="registered task (arc, boolq, squad_v2, openmath, synthetic-arith, ...) or an answer kind "
                             "(numeric, choice, boolean, span, exact)")
    parser.add_argument("--predictions", required=True, help="JSONL file, one {\"response\", \"answer\"} object per line")
    parser.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples for the accuracy interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rel-tol", type=float, default=1e-4, help="numeric answers: relative tolerance")
    parser.add_argument("--abs-tol", type=float, default=1e-6, help="numeric answers: absolute tolerance")
    parser.add_argument("--samples", action="store_true", help="also print each line's extraction and correctness")


def answer_kind_of(task: str) -> tuple[str, str]:
    """(task name, answer kind) for a registered task or a bare answer kind."""
    from ftlab.data.tasks import ANSWER_KINDS, TASKS

    if task in ANSWER_KINDS:
        return task, task
    t = TASKS.get(task)  # unknown names raise with the valid list
    return t.name, t.answer_kind


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
               rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> tuple[dict, list]:
    from ftlab.eval.metrics import ScoringOptions, get_scorer, sample_score_dict, score_responses

    name, kind = answer_kind_of(task)
    responses, golds = read_predictions(predictions)
    scorer = get_scorer(kind, ScoringOptions(rel_tol, abs_tol))
    scores, block = score_responses(scorer, responses, golds, bootstrap_samples=bootstrap_samples, seed=seed)
    block = {"task": name, "answer_kind": kind, **block}
    return block, [sample_score_dict(s) for s in scores]


def run(args: argparse.Namespace) -> int:
    from ftlab.io import to_jsonable

    block, samples = score_file(args.task, args.predictions, bootstrap_samples=args.bootstrap_samples,
                                seed=args.seed, rel_tol=args.rel_tol, abs_tol=args.abs_tol)
    if args.samples:
        block["samples"] = samples
    print(json.dumps(to_jsonable(block), indent=2))
    return 0
