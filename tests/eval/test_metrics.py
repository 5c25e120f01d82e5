"""Normalisation and metrics against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, precision_recall_fscore_support

from ftlab.eval.scoring import normalize as nz
from ftlab.eval.scoring.answer_kinds import get_scorer
from ftlab.eval.scoring.metrics import bootstrap_interval, describe, score_responses, ScoringOptions


@pytest.mark.parametrize("text,value", [
    ("1,000", 1000.0), ("\\frac{1}{2}", 0.5), ("\\dfrac{3}{4}", 0.75), ("\\tfrac12", 0.5), ("-\\frac{1}{2}", -0.5),
    ("\\frac{-3}{4}", -0.75), ("0.5", 0.5), ("1/2", 0.5), ("$5", 5.0), ("\\$1,234.50", 1234.5), ("5 cm", 5.0),
    ("5\\text{ cm}", 5.0), ("x = 3", 3.0), ("50\\%", 50.0), ("90^\\circ", 90.0), ("1e3", 1000.0), (".5", 0.5),
    ("+4", 4.0), ("−7", -7.0), ("abc", None), ("", None), (None, None), ("1/0", None),
    # The whole answer must be one number (issue 11): no leading number is salvaged.
    ("3 1/2", None), ("5\\sqrt{3}", None), ("4\\pi", None), ("1, 4", None), ("y-1", None),
])
def test_parse_number(text, value):
    assert nz.parse_number(text) == value


def test_numbers_match_tolerance():
    from fractions import Fraction as F

    assert nz.numbers_match(F(1, 2), F(1, 2))
    # Integer golds match exactly, whatever the tolerance: 1000.05 is not 1000, 123450 is not 123456.
    assert not nz.numbers_match(F("1000.05"), F(1000), rel_tol=1e-4)
    assert not nz.numbers_match(F(123450), F(123456), rel_tol=1e-4)
    assert nz.numbers_match(F("0.50001"), F("0.5"), rel_tol=1e-4)  # non-integer gold: within 1e-4 relative
    assert not nz.numbers_match(F("0.33"), F(1, 3), rel_tol=1e-4)
    assert not nz.numbers_match(None, F(1))


@pytest.mark.parametrize("text,label", [
    ("B", "B"), ("(b)", "B"), ("C.", "C"), ("D) Paris", "D"), ("\\text{A}", "A"), ("2", "B"), ("4", "D"),
    ("**A**", "A"), ("Paris", None), (None, None), ("Option C", None),
])
def test_normalize_choice(text, label):
    assert nz.normalize_choice(text) == label


@pytest.mark.parametrize("text,label", [
    ("yes", "yes"), ("Yes.", "yes"), ("TRUE", "yes"), ("\\text{no}", "no"), ("False", "no"), (True, "yes"),
    (False, "no"), ("no, because", None), ("perhaps", None), (None, None),
])
def test_normalize_boolean(text, label):
    assert nz.normalize_boolean(text) == label


def test_squad_normalisation_and_scores():
    assert nz.squad_normalize("The  Eiffel Tower!") == "eiffel tower"
    assert nz.squad_exact("the Eiffel Tower", "Eiffel Tower") == 1.0
    # P = 2/4, R = 2/2 -> F1 = 2 * 0.5 * 1 / 1.5
    assert nz.squad_f1("Eiffel Tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3)
    assert nz.squad_f1("", "") == 1.0
    assert nz.squad_f1("Paris", "") == 0.0
    assert nz.squad_f1("an apple", "the banana") == 0.0


def _scores(kind, responses, golds, **kw):
    return score_responses(get_scorer(kind), responses, golds, bootstrap_samples=200, **kw)


def test_choice_metrics_match_sklearn_and_hand_values():
    golds = ["A", "B", "C", "D", "A", "2"]  # "2" is ARC's digit label for B
    responses = ["\\boxed{A}", "\\boxed{B}", "\\boxed{D}", "\\boxed{(D)}", "no box, A", "\\boxed{C}"]
    _, block = _scores("choice", responses, golds)
    m = block["metrics"]
    y_true = ["A", "B", "C", "D", "A", "B"]
    y_pred = ["A", "B", "D", "D", "invalid", "C"]
    labels = ["A", "B", "C", "D"]
    assert m["accuracy"] == pytest.approx(3 / 6) == accuracy_score(y_true, y_pred)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    assert m["per_class"]["D"] == pytest.approx({"precision": p[3], "recall": r[3], "f1": f[3], "support": 1})
    # Hand check for A: predicted A once (correct), gold A twice -> P=1, R=0.5.
    assert (m["per_class"]["A"]["precision"], m["per_class"]["A"]["recall"]) == (1.0, 0.5)
    cm = m["confusion_matrix"]
    assert cm["labels"] == labels + ["invalid"]
    assert cm["matrix"] == confusion_matrix(y_true, y_pred, labels=labels + ["invalid"]).tolist()
    assert m["invalid_rate"] == pytest.approx(1 / 6)
    assert block["format_success_rate"] == pytest.approx(5 / 6)
    assert block["flexible_accuracy"] == pytest.approx(4 / 6)  # "no box, A" is right under the fallback


def test_boolean_metrics_hand_computed():
    golds = [True, "yes", "no", False, "true"]
    responses = ["\\boxed{yes}", "\\boxed{no}", "\\boxed{No}", "\\boxed{true}", "\\boxed{Yes}"]
    _, block = _scores("boolean", responses, golds)
    m = block["metrics"]
    # TP=2 (rows 0, 4), FN=1 (row 1), FP=1 (row 3), TN=1 (row 2)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1_yes"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    y = ["yes", "yes", "no", "no", "yes"]
    yhat = ["yes", "no", "no", "yes", "yes"]
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, yhat))
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_boolean_invalid_answers_count_as_misses():
    _, block = _scores("boolean", ["\\boxed{maybe}", "\\boxed{yes}"], ["yes", "yes"])
    m = block["metrics"]
    assert m["accuracy"] == 0.5 and m["invalid_rate"] == 0.5
    assert m["f1_yes"] == pytest.approx(f1_score(["yes", "yes"], ["invalid", "yes"], labels=["yes"], average="macro"))


def test_numeric_metrics():
    golds = [1000.0, "0.5", "12", 7, "x^2 + 1"]
    responses = ["\\boxed{1,000}", "\\boxed{\\frac{1}{2}}", "\\boxed{15 apples}", "the answer is 7", "\\boxed{x^2+1}"]
    scores, block = _scores("numeric", responses, golds)
    m = block["metrics"]
    assert [s.correct for s in scores] == [True, True, False, False, True]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["mean_abs_diff"] == pytest.approx((0 + 0 + 3) / 3)  # unboxed and symbolic rows have no difference
    assert block["flexible_accuracy"] == pytest.approx(4 / 5)


def test_numeric_tolerance_is_configurable():
    scorer = get_scorer("numeric", ScoringOptions(rel_tol=0.02, abs_tol=0))
    assert scorer.score("\\boxed{0.33}", "1/3").correct
    assert not get_scorer("numeric").score("\\boxed{0.33}", "1/3").correct


def test_squad_v2_known_cases():
    golds = [["Eiffel Tower", "the tower"], [], "", ["Denver Broncos"], ["1996"]]
    responses = [
        "\\boxed{The Eiffel Tower}",  # EM 1 after normalisation
        "\\boxed{unanswerable}",  # abstains on an unanswerable question: right
        "\\boxed{}",  # empty box abstains: right
        "\\boxed{Broncos of Denver}",  # EM 0; F1: common {broncos, denver} -> P=2/3, R=1 -> 0.8
        "I don't know",  # no box: wrong even though it answers nothing
    ]
    scores, block = _scores("span", responses, golds)
    m = block["metrics"]
    assert [s.correct for s in scores] == [True, True, True, False, False]
    assert m["exact_match"] == m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx((1 + 1 + 1 + 0.8 + 0) / 5)
    assert m["HasAns_n"] == 3 and m["NoAns_n"] == 2
    assert m["HasAns_exact"] == pytest.approx(1 / 3)
    assert m["HasAns_f1"] == pytest.approx((1 + 0.8 + 0) / 3)
    assert m["NoAns_accuracy"] == 1.0
    assert m["abstain_rate"] == pytest.approx(2 / 5)


def test_squad_answering_an_unanswerable_question_is_wrong():
    scores, block = _scores("span", ["\\boxed{Paris}"], [[]])
    assert not scores[0].correct and block["metrics"]["NoAns_accuracy"] == 0.0


def test_exact_scorer():
    scores, block = _scores("exact", ["\\boxed{Hello  World.}", "\\boxed{bye}"], ["hello world", "hi"])
    assert [s.correct for s in scores] == [True, False]


def test_bootstrap_interval():
    values = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_interval(values, 2000, seed=0)
    assert lo < 0.3 < hi and hi - lo < 0.25
    assert bootstrap_interval(values, 2000, seed=0) == [lo, hi]  # seeded
    assert bootstrap_interval([1.0] * 10) == [1.0, 1.0]
    assert bootstrap_interval([1.0]) is None
    # The percentile bootstrap of a mean is close to the normal approximation for n=100.
    se = math.sqrt(0.3 * 0.7 / 100)
    assert lo == pytest.approx(0.3 - 1.96 * se, abs=0.03) and hi == pytest.approx(0.3 + 1.96 * se, abs=0.03)


def test_describe():
    d = describe([1.0, 2.0, 3.0, 4.0, None])
    assert d["mean"] == 2.5 and d["median"] == 2.5
    assert d["p90"] == pytest.approx(np.percentile([1, 2, 3, 4], 90))
    assert d["std"] == pytest.approx(np.std([1, 2, 3, 4]))
    assert describe([]) == {"mean": None, "median": None, "p90": None, "std": None}


def test_mismatched_lengths_are_user_errors():
    from ftlab.errors import FtlabError

    with pytest.raises(FtlabError, match="2 responses but 1 gold"):
        _scores("exact", ["a", "b"], ["a"])


def test_metrics_file_and_comparison_stage_share_one_bootstrap():
    """Both intervals of a mean come from ftlab.resampling: the same scores, resample count and seed
    give the same interval in the metrics file and in `ftlab compare` / the study report."""
    import numpy as np

    from ftlab.compare.stats import bootstrap_mean_interval

    rng = np.random.default_rng(3)
    for n, resamples in ((10, 500), (300, 2000), (5000, 1000)):  # 5000 x 1000 crosses a chunk boundary
        values = (rng.random(n) < 0.4).astype(float)
        for seed in (0, 7):
            assert bootstrap_interval(values, resamples, seed) == list(
                bootstrap_mean_interval(values, resamples=resamples, seed=seed))
    # And the interval is the textbook percentile bootstrap: scipy's, drawn differently, agrees to
    # Monte Carlo error on a large resample count.
    from scipy import stats as sps

    values = (rng.random(400) < 0.3).astype(float)
    ref = sps.bootstrap((values,), np.mean, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    lo, hi = bootstrap_interval(values, 20000, 0)
    assert abs(lo - ref.low) < 0.006 and abs(hi - ref.high) < 0.006
