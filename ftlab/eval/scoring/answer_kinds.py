"""The answer kinds: one definition each, holding everything ftlab does differently per kind.

A task's `answer_kind` names one entry of `ANSWER_KINDS`. The definition carries how a response is
read (its flexible fallback beside the strict `\\boxed{}`), how it is scored (its `Scorer`, the
metrics that scorer reports, the scoring rule version), how gold answers are treated when data is
loaded or prepared, its log-likelihood format when it has options, and which scoring modes can
score it. The data loaders, the scorers, the evaluator and the metrics document read these fields
instead of testing the kind's name, so a new answer kind is one new definition here (plus its
scorer class and its test).

This module reads only the eval modules that implement the parts (scoring, extraction, choice
formats, normalisation), never ftlab.data: the data stage imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import ftlab.eval.scoring.normalize as nz
from ftlab.eval.scoring.choice_formats import ChoiceItem, boolean_item, choice_item
from ftlab.eval.scoring.extraction import extract_with, last_line, last_number, last_yes_no, lone_letter
from ftlab.eval.scoring.metrics import (
    BooleanScorer, ChoiceScorer, ExactScorer, NumericScorer, Scorer, ScoringOptions, SpanScorer,
)
from ftlab.kinds.eval import GENERATE, LOGLIKELIHOOD
from ftlab.registry import Registry


@dataclass(frozen=True)
class AnswerKind:
    name: str
    scorer: type[Scorer]  # normalises predictions and golds, aggregates the task metrics
    flexible: Callable[[str], str | None]  # fallback answer reported beside the strict box
    metrics: tuple[str, ...]  # the keys of the scorer's task metrics (on a non-empty dataset)
    # The scoring rule's version: bump it with any change that can change a verdict, so results
    # scored by the old rule become stale for tasks of this kind only (the evaluator rescores them
    # from the stored responses, without generating again).
    version: int
    modes: tuple[str, ...]  # scoring modes (ftlab.kinds.eval names) that can score it
    doc: str
    # How a question and its gold become a log-likelihood item (ftlab.eval.scoring.choice_formats); None
    # when the kind has no options to compare.
    choice_format: Callable[[str, str, str], ChoiceItem] | None = None
    # Predictions must name one of the task's options (the task's labels, else those its
    # questions and golds use): ftlab.eval.scoring.answer_kinds.task_options.
    has_options: bool = False
    # Matched within a numeric tolerance, stored in the task's settings so a change makes it stale.
    uses_tolerance: bool = False
    # Gold rules, applied when data is loaded or prepared (ftlab.data.loading, ftlab.data.prepare):
    empty_gold: bool = False  # an empty gold is an answer (SQuAD: unanswerable), not a row to drop
    reference_answers: str | None = None  # Example.meta key holding every reference answer
    canonical_gold_on_disk: bool = False  # prepare writes the task's canonical label, not the raw one
    gold_warning: Callable[[list], str | None] | None = None  # raw golds -> a warning, or None
    # Custom files without a given kind: `recognises(answers)` (non-empty answers, stripped text)
    # says the golds look like this kind; kinds are tried by ascending `infer_rank`.
    recognises: Callable[[list[str]], bool] | None = None
    infer_rank: int = 0


ANSWER_KINDS: Registry[AnswerKind] = Registry("answer kind")


def get_answer_kind(name: str) -> AnswerKind:
    return ANSWER_KINDS.get(name)


def reads_as_number(value: Any) -> bool:
    """A gold the numeric scorer compares as a number (after the canonical spelling of the data)."""
    try:
        float(nz.format_number(value).replace(",", ""))
        return True
    except ValueError:
        return False


def _non_numeric_golds(answers: list) -> str | None:
    bad = [a for a in answers if not reads_as_number(a)]
    return f"{len(bad)} non-numeric answer(s), e.g. {str(bad[0])[:40]!r} (scored by text)" if bad else None


def _all_match(pattern: str) -> Callable[[list[str]], bool]:
    return lambda answers: bool(answers) and all(re.fullmatch(pattern, a) for a in answers)


ANSWER_KINDS.add("numeric", AnswerKind(
    name="numeric", scorer=NumericScorer, flexible=last_number,
    metrics=("accuracy", "mean_abs_diff", "median_abs_diff", "parsed_rate", "tolerance"),
    version=2,  # v2: whole-expression numbers, exact integer golds, per-task tolerance, LaTeX shorthand, cut-off boxes
    modes=(GENERATE,), uses_tolerance=True, gold_warning=_non_numeric_golds,
    recognises=_all_match(r"-?[\d,]*\.?\d+(e-?\d+)?"), infer_rank=30,
    doc="one number (or a LaTeX expression compared as text); non-integer golds within the task's tolerance"))
ANSWER_KINDS.add("choice", AnswerKind(
    name="choice", scorer=ChoiceScorer, flexible=lone_letter,
    metrics=("accuracy", "macro_f1", "macro_f1_classes", "invalid_rate", "per_class", "confusion_matrix"),
    version=2,  # v2: one option or invalid (`A and C`, `a dog` no longer count as A); the task's label set; cut-off boxes
    modes=(GENERATE, LOGLIKELIHOOD), choice_format=choice_item, has_options=True, canonical_gold_on_disk=True,
    recognises=_all_match(r"[A-Ea-e]"), infer_rank=10,
    doc="one option letter of the task's options"))
ANSWER_KINDS.add("boolean", AnswerKind(
    name="boolean", scorer=BooleanScorer, flexible=last_yes_no,
    metrics=("accuracy", "macro_f1", "macro_f1_classes", "invalid_rate", "confusion_matrix", "f1_yes", "mcc"),
    version=2,  # v2: exactly yes/no/true/false (`yes or no`, `No, because`, `y` are invalid); cut-off boxes
    modes=(GENERATE, LOGLIKELIHOOD), choice_format=boolean_item,
    recognises=lambda answers: bool(answers) and all(a.lower() in ("yes", "no", "true", "false") for a in answers),
    infer_rank=20,
    doc="yes or no (true/false)"))
ANSWER_KINDS.add("span", AnswerKind(
    name="span", scorer=SpanScorer, flexible=last_line,
    metrics=("accuracy", "exact_match", "f1", "HasAns_exact", "HasAns_f1", "HasAns_n", "NoAns_accuracy", "NoAns_n",
             "abstain_rate"),
    version=2,  # v2: unanswerable only when golds normalise to empty; "unknown" golds are answers; cut-off boxes
    modes=(GENERATE,), empty_gold=True, reference_answers="answers",
    doc="a span of the context, SQuAD v2 exact match and F1 over every reference; empty gold = unanswerable"))
ANSWER_KINDS.add("exact", AnswerKind(
    name="exact", scorer=ExactScorer, flexible=last_line, metrics=("accuracy",),
    version=2,  # v2: cut-off boxes are not credited with an earlier box
    modes=(GENERATE,),
    # The fallback of inference: any answers at all are matched as text.
    recognises=lambda answers: True, infer_rank=1000,
    doc="whitespace-, case- and trailing-period-insensitive string equality"))


def extract(text: str | None, answer_kind: str) -> tuple[str | None, str | None]:
    """(strict, flexible) answer of a response, with the kind's flexible fallback."""
    return extract_with(text, ANSWER_KINDS.get(answer_kind).flexible)


def get_scorer(answer_kind: str, options: ScoringOptions | None = None) -> Scorer:
    kind = ANSWER_KINDS.get(answer_kind)
    return kind.scorer(kind, options)


def scoring_version(answer_kind: str) -> int:
    """The current scoring rule version of an answer kind (stored with every task result)."""
    return ANSWER_KINDS.get(answer_kind).version


def task_options(task, questions: Sequence[str], golds: Sequence[Any]) -> tuple[str, ...] | None:
    """A task's option labels when its kind has options: the registered set, else (custom files)
    every letter the questions list as options or the golds use; None for other kinds."""
    if not ANSWER_KINDS.get(task.answer_kind).has_options:
        return None
    if task.labels:
        return tuple(task.labels)
    found = {nz.normalize_choice(str(g)) for g in golds} - {None}
    for q in questions:
        found.update(nz.option_labels(q))
    return tuple(sorted(found)) or None


def gold_of(task, example) -> Any:
    """Every reference answer where the kind keeps them all (SQuAD: EM/F1 take the best match),
    else the one canonical gold string."""
    key = ANSWER_KINDS.get(task.answer_kind).reference_answers
    if key is not None and example.meta.get(key) is not None:
        return list(example.meta[key])
    return example.answer
