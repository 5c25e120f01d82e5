"""Per-task scoring: one scorer per answer kind, sample scores plus dataset-level metrics.

Metrics that scikit-learn defines (accuracy, F1, precision/recall, MCC, confusion matrix) are
computed with it, so numbers agree with what users compute themselves. Everything here works
from raw responses, which lets `ftlab score` and a resumed evaluation recompute metrics with
exactly the code that produced them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ftlab.errors import FtlabError
from ftlab.eval import normalize as nz
from ftlab.eval.extraction import extract
from ftlab.registry import Registry

INVALID = "invalid"


@dataclass
class SampleScore:
    extracted: str | None  # strict: content of the last box
    flexible: str | None  # strict answer, else the kind's fallback
    correct: bool
    flexible_correct: bool
    pred: Any = None  # normalised strict prediction (what the metrics compare)
    gold: Any = None  # normalised gold
    extra: dict = field(default_factory=dict)  # per-sample numbers a kind aggregates (f1, abs_diff)


@dataclass
class ScoringOptions:
    rel_tol: float = 1e-4
    abs_tol: float = 1e-6


class Scorer:
    """Normalises predictions and golds of one answer kind and aggregates task metrics."""

    kind = "base"

    def __init__(self, options: ScoringOptions | None = None):
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
        strict, flexible = extract(response, self.kind)
        g = self.norm_gold(gold)
        p = self.norm_pred(strict)
        pf = self.norm_pred(flexible)
        return SampleScore(
            extracted=strict, flexible=flexible, correct=self.is_correct(p, g),
            flexible_correct=self.is_correct(pf, g), pred=p, gold=g, extra=self.sample_extra(p, g),
        )

    def aggregate(self, scores: Sequence[SampleScore]) -> dict:
        return {"accuracy": _mean([s.correct for s in scores])}


SCORERS: Registry[type[Scorer]] = Registry("answer kind")


def _mean(values: Iterable[float]) -> float | None:
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()) if arr.size else None


def _confusion(golds: list[str], preds: list[str], labels: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(golds, preds, labels=labels)
    return {"labels": labels, "rows": "gold", "columns": "predicted", "matrix": matrix.tolist()}


@SCORERS.register("choice")
class ChoiceScorer(Scorer):
    kind = "choice"

    def norm_gold(self, gold: Any) -> str | None:
        return nz.normalize_choice(str(gold)) if gold is not None else None

    def norm_pred(self, text: str | None) -> str | None:
        return nz.normalize_choice(text)

    def aggregate(self, scores: Sequence[SampleScore]) -> dict:
        from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

        if not scores:
            return {"accuracy": None}
        golds = [s.gold or INVALID for s in scores]
        preds = [s.pred or INVALID for s in scores]
        # A-D always appear so 4-way tasks report every class even when a letter is absent.
        labels = sorted({"A", "B", "C", "D"} | {g for g in golds if g != INVALID})
        prec, rec, f1, support = precision_recall_fscore_support(
            golds, preds, labels=labels, zero_division=0
        )
        return {
            "accuracy": float(accuracy_score(golds, preds)),
            "macro_f1": float(f1_score(golds, preds, labels=labels, average="macro", zero_division=0)),
            "invalid_rate": _mean([p == INVALID for p in preds]),
            "per_class": {
                lab: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
                for lab, p, r, f, n in zip(labels, prec, rec, f1, support)
            },
            "confusion_matrix": _confusion(golds, preds, labels + [INVALID]),
        }


@SCORERS.register("boolean")
class BooleanScorer(Scorer):
    kind = "boolean"

    def norm_gold(self, gold: Any) -> str | None:
        return nz.normalize_boolean(gold)

    def norm_pred(self, text: str | None) -> str | None:
        return nz.normalize_boolean(text)

    def aggregate(self, scores: Sequence[SampleScore]) -> dict:
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

        if not scores:
            return {"accuracy": None}
        golds = [s.gold or INVALID for s in scores]
        preds = [s.pred or INVALID for s in scores]
        return {
            "accuracy": float(accuracy_score(golds, preds)),
            # labels=["yes"] makes an unparseable answer count as a miss, not as a third class.
            "f1_yes": float(f1_score(golds, preds, labels=["yes"], average="macro", zero_division=0)),
            "macro_f1": float(f1_score(golds, preds, labels=["yes", "no"], average="macro", zero_division=0)),
            # Multiclass MCC when invalid answers occur (sklearn's generalisation), binary otherwise.
            "mcc": float(matthews_corrcoef(golds, preds)),
            "invalid_rate": _mean([p == INVALID for p in preds]),
            "confusion_matrix": _confusion(golds, preds, ["yes", "no", INVALID]),
        }


def _compact(text: str) -> str | None:
    norm = nz.normalize_exact(text)
    return norm.replace(" ", "") if norm is not None else None


@dataclass(frozen=True)
class NumericAnswer:
    value: float | None  # None when the text holds no number
    text: str | None  # normalised text, compared when the gold is not a number (e.g. `x^2+1`)


@SCORERS.register("numeric")
class NumericScorer(Scorer):
    kind = "numeric"

    def norm_gold(self, gold: Any) -> NumericAnswer:
        if isinstance(gold, (int, float)) and not isinstance(gold, bool):
            return NumericAnswer(float(gold), str(gold))
        # Gold solutions sometimes carry the box themselves.
        text = extract(str(gold), "numeric")[0] or str(gold)
        return NumericAnswer(nz.parse_number(text), _compact(text))

    def norm_pred(self, text: str | None) -> NumericAnswer | None:
        if text is None:
            return None
        return NumericAnswer(nz.parse_number(text), _compact(text))

    def is_correct(self, pred: Any, gold: Any) -> bool:
        if pred is None:
            return False
        if gold.value is None:
            return pred.text is not None and pred.text == gold.text
        return nz.numbers_match(pred.value, gold.value, self.options.rel_tol, self.options.abs_tol)

    def sample_extra(self, pred: Any, gold: Any) -> dict:
        ok = pred is not None and pred.value is not None and gold.value is not None
        return {"abs_diff": abs(pred.value - gold.value) if ok else None}

    def aggregate(self, scores: Sequence[SampleScore]) -> dict:
        diffs = [s.extra["abs_diff"] for s in scores if s.extra.get("abs_diff") is not None]
        return {
            "accuracy": _mean([s.correct for s in scores]),
            # Over samples where both sides are numbers; large when a model is off by orders of magnitude.
            "mean_abs_diff": _mean(diffs),
            "median_abs_diff": float(np.median(diffs)) if diffs else None,
            "parsed_rate": _mean([s.pred is not None and s.pred.value is not None for s in scores]),
            "tolerance": {"rel": self.options.rel_tol, "abs": self.options.abs_tol},
        }


@SCORERS.register("span")
class SpanScorer(Scorer):
    """SQuAD v2: max EM/F1 over gold answers; empty gold = unanswerable, abstaining is right."""

    kind = "span"

    def norm_gold(self, gold: Any) -> list[str]:
        return nz.gold_spans(gold)

    def norm_pred(self, text: str | None) -> str | None:
        if text is None:
            return None  # no box at all: wrong for answerable and unanswerable questions alike
        return "" if nz.is_abstention(text) else text

    def sample_extra(self, pred: Any, gold: Any) -> dict:
        if pred is None:
            return {"exact": 0.0, "f1": 0.0, "has_answer": bool(gold)}
        golds = gold or [""]
        return {
            "exact": max(nz.squad_exact(pred, g) for g in golds),
            "f1": max(nz.squad_f1(pred, g) for g in golds),
            "has_answer": bool(gold),
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


@SCORERS.register("exact")
class ExactScorer(Scorer):
    """Whitespace-, case- and trailing-period-insensitive string equality (custom tasks)."""

    kind = "exact"

    def norm_gold(self, gold: Any) -> str | None:
        return nz.normalize_exact(None if gold is None else str(gold))

    def norm_pred(self, text: str | None) -> str | None:
        return nz.normalize_exact(text)


def get_scorer(answer_kind: str, options: ScoringOptions | None = None) -> Scorer:
    return SCORERS.get(answer_kind)(options)


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
    """Percentile bootstrap interval of the mean; None with fewer than two values."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2 or n_resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    # Chunks keep memory flat for large test sets (n_resamples x n indices otherwise).
    chunk = max(1, 2_000_000 // arr.size)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, arr.size, size=(stop - start, arr.size))
        means[start:stop] = arr[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return [float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))]


def score_responses(scorer: Scorer, responses: Sequence[str | None], golds: Sequence[Any],
                    *, bootstrap_samples: int = 1000, seed: int = 0) -> tuple[list[SampleScore], dict]:
    """Sample scores plus the dataset block's quality part (no timing): metrics, interval,
    format success rate and flexible accuracy."""
    if len(responses) != len(golds):
        raise FtlabError(f"{len(responses)} responses but {len(golds)} gold answers; every response needs its answer")
    scores = [scorer.score(r, g) for r, g in zip(responses, golds)]
    metrics = scorer.aggregate(scores)
    correct = [float(s.correct) for s in scores]
    block = {
        "n": len(scores),
        "metrics": metrics,
        "intervals": {"accuracy": bootstrap_interval(correct, bootstrap_samples, seed)},
        "format_success_rate": _mean([s.extracted is not None for s in scores]),
        "flexible_accuracy": _mean([s.flexible_correct for s in scores]),
    }
    return scores, block


def sample_score_dict(score: SampleScore) -> dict:
    return {k: v for k, v in dataclasses.asdict(score).items()}
