"""Per-task scoring: one scorer per answer kind, sample scores plus dataset-level metrics.

Metrics that scikit-learn defines (accuracy, F1, precision/recall, MCC, confusion matrix) are
computed with it, so numbers agree with what users compute themselves. Everything here works
from raw responses, which lets `ftlab score` and a resumed evaluation recompute metrics with
exactly the code that produced them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

import ftlab.eval.scoring.normalize as nz
from ftlab.errors import FtlabError
from ftlab.eval.scoring.extraction import box_cut_off, extract_boxed, extract_with
from ftlab.eval.scoring.normalize import DEFAULT_TOLERANCE
from ftlab.resampling import bootstrap_means, percentile_interval

if TYPE_CHECKING:  # the definitions name these classes; a scorer only reads its definition's fields
    from ftlab.eval.scoring.answer_kinds import AnswerKind

INVALID = "invalid"


@dataclass
class SampleScore:
    extracted: str | None  # strict: content of the last box (None when absent or cut off)
    flexible: str | None  # strict answer, else the kind's fallback
    correct: bool
    flexible_correct: bool
    pred: Any = None  # normalised strict prediction (what the metrics compare)
    gold: Any = None  # normalised gold
    extra: dict = field(default_factory=dict)  # per-sample numbers a kind aggregates (f1, abs_diff)
    cut_off: bool = False  # the last box never closed: a cut-off answer, never an earlier box


@dataclass
class ScoringOptions:
    """What a scorer needs besides the responses: a numeric task's tolerance, a choice task's options."""

    rel_tol: float = DEFAULT_TOLERANCE.rel
    abs_tol: float = DEFAULT_TOLERANCE.abs
    rounded_golds: bool = DEFAULT_TOLERANCE.rounded_golds
    labels: tuple[str, ...] | None = None  # choice: the task's options; None = any single letter

    @classmethod
    def for_task(cls, task, *, rel_tol: float | None = None, abs_tol: float | None = None,
                 labels: Sequence[str] | None = None) -> "ScoringOptions":
        """The task's documented tolerance (overridable) and option labels."""
        tol = task.tolerance
        return cls(rel_tol=tol.rel if rel_tol is None else rel_tol, abs_tol=tol.abs if abs_tol is None else abs_tol,
                   rounded_golds=tol.rounded_golds, labels=tuple(labels) if labels else None)

    def tolerance(self) -> dict:
        return {"rel": self.rel_tol, "abs": self.abs_tol, "rounded_golds": self.rounded_golds}


class Scorer:
    """Normalises predictions and golds of one answer kind and aggregates task metrics.

    A scorer is made for its answer kind's definition (ftlab.eval.scoring.answer_kinds), which names it,
    gives its flexible fallback and its scoring rule version.
    """

    def __init__(self, definition: AnswerKind, options: ScoringOptions | None = None):
        self.definition = definition
        self.kind = definition.name
        self.version = definition.version
        self.options = options or ScoringOptions()

    def norm_gold(self, gold: Any) -> Any:
        raise NotImplementedError

    def norm_pred(self, text: str | None) -> Any:
        raise NotImplementedError

    def is_correct(self, pred: Any, gold: Any) -> bool:
        return pred is not None and pred == gold

    def sample_extra(self, pred: Any, gold: Any) -> dict:
        return {}

    def score(self, response: str | None, gold: Any) -> SampleScore:
        strict, flexible = extract_with(response, self.definition.flexible)
        g = self.norm_gold(gold)
        if g is None:
            raise FtlabError(f"gold answer {gold!r} is not a valid {self.kind} answer "
                             f"({self.gold_help()}); fix the dataset or the predictions file")
        p = self.norm_pred(strict)
        pf = self.norm_pred(flexible)
        return SampleScore(
            extracted=strict, flexible=flexible, correct=self.is_correct(p, g),
            flexible_correct=self.is_correct(pf, g), pred=p, gold=g, extra=self.sample_extra(p, g),
            cut_off=box_cut_off(response),
        )

    def gold_help(self) -> str:
        return "expected a non-empty answer"

    def sample_line(self, response: str | None, gold: Any) -> dict:
        """The scoring fields of a sample line (`<model>.samples.jsonl`)."""
        s = self.score(response, gold)
        line = {"extracted": s.extracted, "flexible": s.flexible, "correct": s.correct,
                "flexible_correct": s.flexible_correct, "cut_off": s.cut_off, "scoring_version": self.version}
        if "f1" in s.extra:
            line["f1"] = s.extra["f1"]  # graded score the comparison stage bootstraps
        return line

    def aggregate(self, scores: Sequence[SampleScore]) -> dict:
        return {"accuracy": _mean([s.correct for s in scores])}


def _mean(values: Iterable[float]) -> float | None:
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()) if arr.size else None


def _confusion(golds: list[str], preds: list[str], labels: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix  # lazy: scikit-learn takes 3 s

    matrix = confusion_matrix(golds, preds, labels=labels)
    return {"labels": labels, "rows": "gold", "columns": "predicted", "matrix": matrix.tolist()}


def _class_metrics(golds: list[str], preds: list[str], labels: list[str]) -> dict:
    """accuracy, macro-F1 over the classes that occur among the golds (a class with no support has
    no recall to average; counting it as F1 0 would punish a model for a class the data lacks),
    per-class precision/recall/F1/support over every label, confusion matrix with `invalid`."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support  # lazy: scikit-learn takes 3 s

    supported = [lab for lab in labels if lab in set(golds)]
    prec, rec, f1, support = precision_recall_fscore_support(golds, preds, labels=labels, zero_division=0)
    return {
        "accuracy": _mean([g == p for g, p in zip(golds, preds)]),
        "macro_f1": float(f1_score(golds, preds, labels=supported, average="macro", zero_division=0)),
        "macro_f1_classes": supported,
        "invalid_rate": _mean([p == INVALID for p in preds]),
        "per_class": {
            lab: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for lab, p, r, f, n in zip(labels, prec, rec, f1, support)
        },
        "confusion_matrix": _confusion(golds, preds, labels + [INVALID]),
    }


class ChoiceScorer(Scorer):
    """The boxed answer names exactly one of the task's options (normalize.normalize_choice)."""

    def norm_gold(self, gold: Any) -> str | None:
        return nz.normalize_choice(str(gold)) if gold is not None else None

    def gold_help(self) -> str:
        return "expected an option letter such as B"

    def norm_pred(self, text: str | None) -> str | None:
        return nz.normalize_choice(text, self.options.labels)

    def aggregate(self, scores: Sequence[SampleScore]) -> dict:
        if not scores:
            return {"accuracy": None}
        golds = [s.gold for s in scores]
        preds = [s.pred or INVALID for s in scores]
        # The task's options; without them (a bare `choice` scoring run) the letters the golds use.
        labels = sorted(set(self.options.labels or ()) | set(golds))
        return _class_metrics(golds, preds, labels)


class BooleanScorer(Scorer):
    """Exactly yes/no/true/false (normalize.normalize_boolean); golds in the datasets' encodings."""

    def norm_gold(self, gold: Any) -> str | None:
        return nz.boolean_gold(gold)

    def gold_help(self) -> str:
        return "expected yes/no or true/false"

    def norm_pred(self, text: str | None) -> str | None:
        return nz.normalize_boolean(text)

    def aggregate(self, scores: Sequence[SampleScore]) -> dict:
        from sklearn.metrics import f1_score, matthews_corrcoef  # lazy: scikit-learn takes 3 s

        if not scores:
            return {"accuracy": None}
        golds = [s.gold for s in scores]
        preds = [s.pred or INVALID for s in scores]
        out = _class_metrics(golds, preds, ["yes", "no"])
        del out["per_class"]
        out.update(
            # labels=["yes"] makes an unparseable answer count as a miss, not as a third class.
            f1_yes=float(f1_score(golds, preds, labels=["yes"], average="macro", zero_division=0)),
            # Multiclass MCC when invalid answers occur (sklearn's generalisation), binary otherwise.
            mcc=float(matthews_corrcoef(golds, preds)),
        )
        return out


@dataclass(frozen=True)
class NumericAnswer:
    value: Fraction | None  # exact value when the whole answer is one number
    text: str | None  # canonical LaTeX text, compared when the gold is not a number (e.g. `x^2+1`)
    decimals: int = 0  # digits after the point as written (golds: for rounded-gold matching)


def _numeric_answer(text: str) -> NumericAnswer:
    return NumericAnswer(nz.parse_number(text), nz.normalize_math_text(text), nz.decimal_places(text))


class NumericScorer(Scorer):
    """The whole boxed expression must be the gold's number (`5\\sqrt{3}` is not 5); integer golds
    match exactly, non-integer golds within the task's documented tolerance; a gold that is not a
    number (`x^2+1`) matches the same LaTeX text after canonical spelling."""

    def norm_gold(self, gold: Any) -> NumericAnswer | None:
        if isinstance(gold, (int, float)) and not isinstance(gold, bool):
            if isinstance(gold, float) and not math.isfinite(gold):
                return None
            # repr gives the shortest decimal that reads back as the float: 16.67, not 16.6699999...
            return _numeric_answer(str(gold) if isinstance(gold, int) else repr(gold))
        text = str(gold).strip()
        if not text:
            return None
        # Gold solutions sometimes carry the box themselves.
        return _numeric_answer(extract_boxed(text) or text)

    def norm_pred(self, text: str | None) -> NumericAnswer | None:
        if text is None:
            return None
        return _numeric_answer(text)

    def is_correct(self, pred: Any, gold: Any) -> bool:
        if pred is None:
            return False
        if gold.value is None:
            return pred.text is not None and pred.text == gold.text
        o = self.options
        return nz.numbers_match(pred.value, gold.value, rel_tol=o.rel_tol, abs_tol=o.abs_tol,
                                gold_decimals=gold.decimals, rounded_golds=o.rounded_golds)

    def sample_extra(self, pred: Any, gold: Any) -> dict:
        ok = pred is not None and pred.value is not None and gold.value is not None
        return {"abs_diff": float(abs(pred.value - gold.value)) if ok else None}

    def aggregate(self, scores: Sequence[SampleScore]) -> dict:
        diffs = [s.extra["abs_diff"] for s in scores if s.extra.get("abs_diff") is not None]
        return {
            "accuracy": _mean([s.correct for s in scores]),
            # Over samples where both sides are numbers; large when a model is off by orders of magnitude.
            "mean_abs_diff": _mean(diffs),
            "median_abs_diff": float(np.median(diffs)) if diffs else None,
            "parsed_rate": _mean([s.pred is not None and s.pred.value is not None for s in scores]),
            "tolerance": self.options.tolerance(),
        }


class SpanScorer(Scorer):
    """SQuAD v2 as the official script scores it: max EM/F1 over the gold answers that normalise to
    something, `""` when none does (unanswerable). An empty box or an abstention phrase is the
    prediction `""`; a response without a (closed) box is wrong for every question."""

    def norm_gold(self, gold: Any) -> list[str]:
        return nz.gold_spans(gold)

    def norm_pred(self, text: str | None) -> str | None:
        if text is None:
            return None  # no box at all: wrong for answerable and unanswerable questions alike
        return nz.squad_prediction(text)

    def sample_extra(self, pred: Any, gold: Any) -> dict:
        # HasAns/NoAns split as the official script makes it: by whether any gold answer exists.
        has_answer = bool(gold)
        if pred is None:
            return {"exact": 0.0, "f1": 0.0, "has_answer": has_answer}
        golds = nz.scoring_spans(gold)
        return {
            "exact": max(nz.squad_exact(pred, g) for g in golds),
            "f1": max(nz.squad_f1(pred, g) for g in golds),
            "has_answer": has_answer,
        }

    def is_correct(self, pred: Any, gold: Any) -> bool:
        return bool(self.sample_extra(pred, gold)["exact"])

    def aggregate(self, scores: Sequence[SampleScore]) -> dict:
        has = [s for s in scores if s.extra["has_answer"]]
        no = [s for s in scores if not s.extra["has_answer"]]
        exact = _mean([s.extra["exact"] for s in scores])
        return {
            "accuracy": exact,
            "exact_match": exact,
            "f1": _mean([s.extra["f1"] for s in scores]),
            "HasAns_exact": _mean([s.extra["exact"] for s in has]),
            "HasAns_f1": _mean([s.extra["f1"] for s in has]),
            "HasAns_n": len(has),
            "NoAns_accuracy": _mean([s.extra["exact"] for s in no]),
            "NoAns_n": len(no),
            "abstain_rate": _mean([s.pred == "" for s in scores]),
        }


class ExactScorer(Scorer):
    """Whitespace-, case- and trailing-period-insensitive string equality (custom tasks)."""

    def norm_gold(self, gold: Any) -> str | None:
        return nz.normalize_exact(None if gold is None else str(gold))

    def norm_pred(self, text: str | None) -> str | None:
        return nz.normalize_exact(text)


# ---------------------------------------------------------------------------------------------
# Statistics shared by every task


def describe(values: Sequence[float]) -> dict:
    """mean, median, p90 and (population) std; None entries when there are no values."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if not arr.size:
        return {"mean": None, "median": None, "p90": None, "std": None}
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "p90": float(np.percentile(arr, 90)),
        "std": float(arr.std()),
    }


def bootstrap_interval(values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean (ftlab.resampling, as the comparison stage's); None
    with fewer than two values."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2 or n_resamples <= 0:
        return None
    return list(percentile_interval(bootstrap_means(arr, n_resamples, seed), confidence))


def score_responses(scorer: Scorer, responses: Sequence[str | None], golds: Sequence[Any],
                    *, bootstrap_samples: int = 1000, seed: int = 0) -> tuple[list[SampleScore], dict]:
    """Sample scores plus the dataset block's quality part (no timing): metrics, interval,
    format success rate and flexible accuracy."""
    if len(responses) != len(golds):
        raise FtlabError(f"{len(responses)} responses but {len(golds)} gold answers; every response needs its answer")
    scores = []
    for row, (response, gold) in enumerate(zip(responses, golds), 1):
        try:
            scores.append(scorer.score(response, gold))
        except FtlabError as exc:
            raise FtlabError(f"row {row}: {exc}") from None
    metrics = scorer.aggregate(scores)
    correct = [float(s.correct) for s in scores]
    block = {
        "n": len(scores),
        "metrics": metrics,
        "intervals": {"accuracy": bootstrap_interval(correct, bootstrap_samples, seed)},
        "format_success_rate": _mean([s.extracted is not None for s in scores]),
        "flexible_accuracy": _mean([s.flexible_correct for s in scores]),
        # Responses whose last box never closed (cut off by max_new_tokens or a stop): scored as no
        # answer, shown so a reader sees how often the token budget decided the verdict.
        "cut_off_rate": _mean([s.cut_off for s in scores]),
    }
    return scores, block


def sample_score_dict(score: SampleScore) -> dict:
    return {k: v for k, v in dataclasses.asdict(score).items()}
