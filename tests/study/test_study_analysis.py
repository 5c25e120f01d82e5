"""The study verdict's statistics against hand counts, scipy and statsmodels, and its report files.

The frames are built in-process with known outcomes (no model, no files): recipes A, B, C trained
with seeds, an unseeded base snapshot as the baseline, and a GPTQ variant of every trained model.
The recipe-level test itself (`ftlab.compare.crossed`) is checked against statsmodels' mixed model
and scipy in tests/compare/test_crossed.py and for calibration in tests/compare/test_verdict_calibration.py; here,
that the verdict feeds it the right matrices and words what it found.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ftlab.compare.crossed import crossed_difference, crossed_mean, crossed_ratio, seed_pool, wider_than_pool
from ftlab.compare.stats import format_p, holm, mcnemar_mdd, paired_bootstrap
from ftlab.errors import ConfigError, FtlabError
from ftlab.study.analysis import StudyAnalysisSettings, _configs, analyze_study, compare_configs, config_of
from ftlab.study.report import write_report
from ftlab.study.verdict import ONE_SEED, verdict_text

N = 40
FAST = StudyAnalysisSettings(resamples=2000)


def items(*ranges, n=N) -> list[int]:
    """0/1 outcomes over n items, correct on the given half-open ranges."""
    out = [0] * n
    for lo, hi in ranges:
        out[lo:hi] = [1] * (hi - lo)
    return out


def lose_first(outcomes: list[int], k: int) -> list[int]:
    """The outcomes with the first k correct items turned wrong (a quantization loss)."""
    out, lost = list(outcomes), 0
    for i, c in enumerate(out):
        if c and lost < k:
            out[i], lost = 0, lost + 1
    return out


def build(outcomes: dict, *, task: str = "arith", scores: dict | None = None, sizes: dict | None = None,
          latency: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """samples and models frames of the contract from {(recipe, seed, quant): 0/1 outcomes}.

    A quant other than "none" is a PTQ variant whose source is the same (recipe, seed) unquantized.
    """
    sample_rows, model_rows = [], []

    def name(recipe, seed, quant):
        return f"{recipe}-s{'x' if seed is None else seed}-{quant}"

    for (recipe, seed, quant), correct in outcomes.items():
        model = name(recipe, seed, quant)
        source = None if quant == "none" else name(recipe, seed, "none")
        score = (scores or {}).get((recipe, seed, quant), [float(c) for c in correct])
        for i, (c, s) in enumerate(zip(correct, score)):
            sample_rows.append({"recipe": recipe, "seed": seed, "quant": quant, "task": task, "index": i,
                                "correct": bool(c), "score": float(s), "model": model, "source_model": source})
        model_rows.append({"recipe": recipe, "seed": seed, "quant": quant, "task": task, "model": model,
                           "source_model": source, "n": len(correct),
                           "size_bytes": (sizes or {}).get((recipe, quant), 4e8 if quant == "none" else 1e8),
                           "samples_per_s": 5.0, "latency_mean_s": (latency or {}).get((recipe, quant), 0.2),
                           "accuracy": float(np.mean(correct)), "fidelity_top1": math.nan})
    samples = pd.DataFrame(sample_rows)
    samples["seed"] = samples["seed"].astype("Int64")
    models = pd.DataFrame(model_rows)
    models["seed"] = models["seed"].astype("Int64")
    return samples, models


# Base right on items 0-9. A, B, C differ by known items; every GPTQ variant loses known items.
BASE = items((0, 10))
A = {0: items((0, 20)), 1: items((2, 22)), 2: items((0, 18))}
B = {0: items((0, 15)), 1: items((0, 16)), 2: items((0, 14))}
C = {0: items((0, 12)), 1: items((0, 9))}


def study_outcomes() -> dict:
    out = {("base", None, "none"): BASE}
    for recipe, seeds in (("A", A), ("B", B), ("C", C)):
        for seed, correct in seeds.items():
            out[(recipe, seed, "none")] = correct
    for seed, correct in A.items():
        out[("A", seed, "GPTQ")] = lose_first(correct, 1)
    for seed, correct in B.items():
        out[("B", seed, "GPTQ")] = lose_first(correct, 10)
    for seed, correct in C.items():
        out[("C", seed, "GPTQ")] = list(correct)
    return out


@pytest.fixture(scope="module")
def study():
    samples, models = build(study_outcomes())
    # A second task with graded scores (F1-like) and its own outcomes, so families span tasks.
    qa = {("base", None, "none"): items((0, 20)), ("A", 0, "none"): items((0, 24)), ("A", 1, "none"): items((0, 22)),
          ("A", 2, "none"): items((0, 23)), ("B", 0, "none"): items((0, 21)), ("B", 1, "none"): items((0, 20)),
          ("B", 2, "none"): items((0, 19)), ("C", 0, "none"): items((0, 20)), ("C", 1, "none"): items((0, 21))}
    graded = {key: [1.0 if c else 0.5 for c in v] for key, v in qa.items()}
    s2, m2 = build(qa, task="qa", scores=graded)
    samples = pd.concat([samples, s2], ignore_index=True)
    models = pd.concat([models, m2], ignore_index=True)
    return samples, models, analyze_study(samples, models, FAST)


def mat(*rows) -> np.ndarray:
    return np.array(rows, dtype=float)


def test_ranking_order_mean_and_seed_std(study):
    *_, a = study
    r = a.ranking[(a.ranking.task == "arith") & (a.ranking.quant == "none")]
    assert list(r.recipe) == ["A", "B", "C", "base"] and list(r["rank"]) == [1, 2, 3, 4]
    top = r.iloc[0]
    assert top["mean"] == pytest.approx(np.mean([20 / 40, 20 / 40, 18 / 40]))
    assert top.seed_std == pytest.approx(np.std([0.5, 0.5, 0.45], ddof=1))
    assert r.iloc[2].seed_std == pytest.approx(np.std([12 / 40, 9 / 40], ddof=1)) and r.iloc[2].seeds == 2
    assert math.isnan(r.iloc[3].seed_std) and r.iloc[3].seeds == 1 and bool(r.iloc[3].baseline)
    assert (r.ci_low <= r["mean"]).all() and (r["mean"] <= r.ci_high).all()
    # A recipe with seeds: the crossed interval over its 3 models x 40 items; the unseeded base:
    # the percentile bootstrap over items of its one model.
    assert list(r.level) == ["recipe", "recipe", "recipe", "no seed"]
    ci = crossed_mean(mat(*A.values()))
    assert (top.ci_low, top.ci_high) == (pytest.approx(ci.ci_low), pytest.approx(ci.ci_high))
    assert top.ci_high - top.ci_low > 2 * 1.96 * np.std([0.5, 0.5, 0.45], ddof=1) / np.sqrt(3)  # items count too
    # Unquantized first, then PTQ variants; the GPTQ table ranks its own scores (B lost 10 items/seed).
    quants = list(dict.fromkeys(a.ranking[a.ranking.task == "arith"].quant))
    assert quants == ["none", "GPTQ"]
    g = a.ranking[(a.ranking.task == "arith") & (a.ranking.quant == "GPTQ")]
    assert list(g.recipe) == ["A", "C", "B"]
    # The graded task ranks by score (1.0 / 0.5), not by correctness.
    qa = a.ranking[a.ranking.task == "qa"].set_index("recipe")
    assert qa.loc["base", "mean"] == pytest.approx((20 * 1.0 + 20 * 0.5) / 40)


def test_recipes_are_tested_against_the_base_over_seeds_and_items(study):
    *_, a = study
    t = a.vs_baseline.set_index(["task", "quant", "recipe"])
    # A (3 seeds) vs the unseeded base: the crossed test of the 3 x 40 matrix against the base's one row.
    r = t.loc[("arith", "none", "A")]
    ref = crossed_difference(mat(BASE), mat(*A.values()), seeded_a=False)
    assert (r.level, r.test, r.seeds, r.baseline_seeds, r.n_items) == ("recipe", "seeds x items", 3, 1, 40)
    assert r["diff"] == pytest.approx(28 / 120) and r.p_value == pytest.approx(ref.p_value, rel=1e-12)
    assert (r.ci_low, r.ci_high, r.se) == (pytest.approx(ref.ci_low), pytest.approx(ref.ci_high), pytest.approx(ref.se))
    assert r.mdd == pytest.approx(ref.mdd(0.05, 0.8)) and r.seed_part == pytest.approx(ref.seed_part)
    # The disagreement counts describe every (seed, item) pair: seed 0 gains items 10-19, seed 1
    # gains 10-21 and loses 0-1, seed 2 gains 10-17 -> 30 recipe-only, 2 baseline-only in 120 pairs.
    assert (r.n_pairs, r.recipe_only, r.baseline_only) == (120, 30, 2)
    assert r.diff_correct == pytest.approx(28 / 120) and r.discordance == pytest.approx(32 / 120)
    # C has two seeds (12/40 and 9/40): one degree of freedom for its seed spread, so a tiny
    # difference against the base has an interval wider than half the score scale and is too small to detect.
    c = t.loc[("arith", "none", "C")]
    assert c.seeds == 2 and c.ci_high - c.ci_low > 0.5
    assert bool(c.undetectable) and c.mdd > abs(c["diff"])
    # A quantized recipe is tested against the unquantized base (the base has no GPTQ variant).
    g = t.loc[("arith", "GPTQ", "A")]
    assert g.baseline_quant == "none" and (g.recipe_only, g.baseline_only) == (30, 5)
    gptq_a = [lose_first(v, 1) for v in A.values()]
    assert g.p_value == pytest.approx(crossed_difference(mat(BASE), mat(*gptq_a), seeded_a=False).p_value, rel=1e-12)


def test_pooling_seeds_as_independent_pairs_would_have_declared_what_the_seeds_do_not_support():
    # Two recipes whose three seeds scatter: X scores 12, 4, 20 of 40, Y 4, 12, 4.
    x = {0: items((0, 12)), 1: items((0, 4)), 2: items((0, 20))}
    y = {0: items((0, 4)), 1: items((0, 12)), 2: items((0, 4))}
    outcomes = {("X", k, "none"): v for k, v in x.items()} | {("Y", k, "none"): v for k, v in y.items()}
    samples, models = build(outcomes)
    row = analyze_study(samples, models, StudyAnalysisSettings(baseline="Y", resamples=200)).vs_baseline.iloc[0]
    # The earlier verdict paired seed k with seed k and pooled the 120 pairs: X-only 8 + 16, Y-only 8,
    # exact McNemar p = 0.007, "significant".
    assert sps.binomtest(8, 32, 0.5).pvalue < 0.01
    # Over seeds and items the spread of the seeds (0.30, 0.10, 0.50 vs 0.10, 0.30, 0.10) leaves it open.
    assert row.level == "recipe" and row.p_value > 0.2 and not row.significant
    assert row.p_value >= sps.ttest_ind([12, 4, 20], [4, 12, 4], equal_var=False).pvalue - 1e-9
    # Every model of X against every model of Y: items 4-11 give 2 x 2 X-only and 1 x 1 Y-only pairs,
    # items 12-19 give 1 x 3 X-only pairs.
    assert (row.recipe_only, row.baseline_only, row.n_pairs) == (8 * 4 + 8 * 3, 8, 360)


def _holm_by_hand(p: list[float]) -> list[float]:
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        out[i] = running
    return out


def test_holm_over_the_whole_family_of_baseline_tests(study):
    *_, a = study
    t = a.vs_baseline
    # Family: A, B, C x {none, GPTQ} on arith + A, B, C on qa (unquantized only) = 9 tests.
    assert len(t) == 9
    assert t.p_holm.tolist() == pytest.approx(_holm_by_hand(t.p_value.tolist()), rel=1e-12)
    assert (t.p_holm >= t.p_value - 1e-15).all() and (t.p_holm <= 1).all()
    assert (t.significant == (t.p_holm <= FAST.alpha)).all()
    # Rejection order follows the raw p-values: every rejected test has a smaller raw p than any kept one.
    if t.significant.any() and (~t.significant).any():
        assert t[t.significant].p_value.max() < t[~t.significant].p_value.min()


def test_holm_matches_statsmodels_and_the_step_down_rules():
    # Reference: statsmodels 0.15.0 multipletests(p, method="holm"), run once:
    #   adjusted [0.15, 0.057, 0.15, 0.035, 0.4, 0.15, 0.9]; rejects only index 3 at 0.05, 3 and 1 at 0.06.
    p = [0.040, 0.0095, 0.030, 0.005, 0.200, 0.030, 0.9]
    adj = holm(p)
    assert adj.tolist() == pytest.approx([0.15, 0.057, 0.15, 0.035, 0.4, 0.15, 0.9], abs=1e-12)
    assert list(np.flatnonzero(adj <= 0.05)) == [3] and list(np.flatnonzero(adj <= 0.06)) == [1, 3]
    # Step-down by hand at 0.05: 0.005 <= 0.05/7 rejects, then 0.0095 > 0.05/6 stops everything after it.
    assert 0.005 <= 0.05 / 7 and 0.0095 > 0.05 / 6
    # Monotone in the raw order (0.04 * 3 = 0.12 is lifted to 0.15 by the running max) and capped at 1
    # (statsmodels: [1.0, 1.0, 0.03]).
    assert holm([0.6, 0.7, 0.01]).tolist() == pytest.approx([1.0, 1.0, 0.03])
    # NaN is no test: it stays NaN and does not count in m.
    with_nan = holm([0.01, np.nan, 0.02])
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.02)
    assert holm([]).size == 0
    with pytest.raises(FtlabError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


def test_ties_with_the_best_seed_by_seed_where_the_seeds_match_and_correct_within_the_task(study):
    *_, a = study
    t = a.vs_best[a.vs_best.task == "arith"].set_index(["quant", "recipe"])
    # A (seeds 0-2) vs C (seeds 0, 1): other seed sets, so the two recipes' seeds are independent samples.
    ac = t.loc[("none", "C")]
    ref = crossed_difference(mat(*A.values()), mat(*C.values()))
    assert ac.best == "A" and (ac.best_seeds, ac.seeds, ac.n_pairs, ac.test) == (3, 2, 240, "seeds x items")
    assert ac.p_value == pytest.approx(ref.p_value, rel=1e-12) and ac["diff"] == pytest.approx(ref.estimate)
    # A vs B, both trained with seeds 0-2: seed k against seed k (they share the data order).
    ab = t.loc[("none", "B")]
    assert ab.test == "seeds x items, paired by seed"
    assert ab.p_value == pytest.approx(crossed_mean(mat(*B.values()) - mat(*A.values())).p_value, rel=1e-12)
    # Holm runs within the task over every pair of its configurations, the none and GPTQ tables
    # together: the 5 reported comparisons with the best and the 4 others (B-C, B-base, C-base;
    # GPTQ B-C), each p-value the verdict's own test of that pair.
    assert len(t) == 5 and set(t.family_size) == {9}
    samples, _, _ = study
    configs = _configs(samples[samples.task == "arith"])
    others = [compare_configs(config_of(configs[("arith", q, x)]), config_of(configs[("arith", q, y)]), FAST)["p_value"]
              for q, x, y in (("none", "B", "C"), ("none", "B", "base"), ("none", "C", "base"), ("GPTQ", "B", "C"))]
    assert ab.p_value == pytest.approx(compare_configs(config_of(configs[("arith", "none", "A")]),
                                                       config_of(configs[("arith", "none", "B")]), FAST)["p_value"])
    assert t.p_holm.tolist() == pytest.approx(_holm_by_hand(t.p_value.tolist() + others)[:5], rel=1e-12)
    assert (t.p_holm >= np.array(_holm_by_hand(t.p_value.tolist())) - 1e-15).all()  # never more generous
    assert t.tied.tolist() == (t.p_holm > FAST.alpha).tolist()
    tied = {q: [r for (qq, r) in t.index[t.tied] if qq == q] for q in ("none", "GPTQ")}
    assert a.verdicts[0].best == {"none": "A", "GPTQ": "A"} and a.verdicts[0].tied == tied
    # B lost 10 items per seed to GPTQ: far below A there, whatever the seeds do.
    assert not t.loc[("GPTQ", "B")].tied


def test_recovery_is_against_each_models_own_source(study):
    *_, a = study
    r = a.recovery.set_index(["task", "recipe", "quant"])
    assert len(r) == 3  # only arith has GPTQ variants
    rec = r.loc[("arith", "A", "GPTQ")]
    # Each A seed loses one item to quantization: 58 -> 55 correct of 120 pairs; source is A, not base.
    assert (rec.models, rec.n_pairs, rec.source_only, rec.quant_only) == (3, 120, 3, 0)
    assert rec.source_score == pytest.approx(58 / 120) and rec.quant_score == pytest.approx(55 / 120)
    assert rec.ratio == pytest.approx(55 / 58) and rec.ci_low <= rec.ratio <= rec.ci_high and rec.source_quant == "none"
    # Recipe level: quantized minus source, model by model (row k is seed k's own source), the crossed test.
    src, q = mat(*A.values()), mat(*(lose_first(v, 1) for v in A.values()))
    assert rec.level == "recipe" and rec.p_value == pytest.approx(crossed_mean(q - src).p_value, rel=1e-12)
    assert (rec.ci_low, rec.ci_high) == pytest.approx(crossed_ratio(src, q)[1:])
    loss = r.loc[("arith", "B", "GPTQ")]
    assert loss.ratio == pytest.approx(15 / 45) and loss.source_only == 30 and bool(loss.significant)
    same = r.loc[("arith", "C", "GPTQ")]
    assert same.ratio == 1.0 and same.p_value == 1.0
    assert r.p_holm.tolist() == pytest.approx(_holm_by_hand(r.p_value.tolist()))


def test_a_single_models_recovery_keeps_mcnemar():
    src = items((0, 20))
    samples, models = build({("base", None, "none"): BASE, ("A", 0, "none"): src,
                             ("A", 0, "GPTQ"): lose_first(src, 4)})
    rec = analyze_study(samples, models, FAST).recovery.iloc[0]
    assert (rec.level, rec.test, rec.models) == ("model", "McNemar", 1)
    assert rec.p_value == pytest.approx(sps.binomtest(0, 4, 0.5).pvalue)
    boot = paired_bootstrap([float(c) for c in src], [float(c) for c in lose_first(src, 4)], resamples=2000)
    assert (rec.ci_low, rec.ci_high) == (pytest.approx(boot.ratio_low), pytest.approx(boot.ratio_high))


def test_ratio_bootstrap_matches_a_one_shot_implementation():
    rng = np.random.default_rng(5)
    src = (rng.random(300) < 0.6).astype(float)
    q = np.where(rng.random(300) < 0.9, src, 1 - src)
    r = paired_bootstrap(src, q, resamples=3000, seed=11)
    idx = np.random.default_rng(11).integers(0, 300, size=(3000, 300))
    ratios = q[idx].mean(axis=1) / src[idx].mean(axis=1)
    lo, hi = np.quantile(ratios, [0.025, 0.975], method="inverted_cdf")
    assert (r.ratio_low, r.ratio_high) == (pytest.approx(lo), pytest.approx(hi))
    assert r.ratio == pytest.approx(q.mean() / src.mean()) and r.ratio_low < r.ratio < r.ratio_high
    # Denominator 0: undefined ratio, not a crash; one item, both 0: nothing to estimate.
    zero = paired_bootstrap([0, 0], [1, 0], resamples=100)
    assert math.isnan(zero.ratio) and math.isnan(zero.ratio_low)
    # A resample with source mean 0 counts as +inf: the upper bound may be unbounded, never NaN.
    tiny = paired_bootstrap([1, 0, 0, 0], [1, 1, 0, 0], resamples=2000, seed=1)
    assert tiny.ratio == 2.0 and tiny.ratio_high == math.inf and tiny.ratio_undefined > 0


def _mcnemar_power(n: int, psi: float, delta: float, alpha: float = 0.05, *, exact: bool) -> float:
    """Power by summing binomials: D ~ Bin(n, psi) discordant pairs, N10 | D ~ Bin(D, p10 / psi)."""
    p10 = (psi + delta) / 2
    z = sps.norm.ppf(1 - alpha / 2)
    total = 0.0
    for d in range(1, n + 1):
        k = np.arange(d + 1)
        if exact:
            reject = np.minimum(1, 2 * sps.binom.cdf(np.minimum(k, d - k), d, 0.5)) <= alpha
        else:
            reject = np.abs(2 * k - d) > z * np.sqrt(d)
        total += sps.binom.pmf(d, n, psi) * sps.binom.pmf(k, d, p10 / psi)[reject].sum()
    return total


@pytest.mark.parametrize("n, psi", [(60, 0.2), (150, 0.3), (400, 0.1)])
def test_mcnemar_mdd_against_a_numerical_power_computation(n, psi):
    mdd = mcnemar_mdd(n, psi, alpha=0.05, power=0.8)
    assert 0 < mdd < psi
    # The z-test the relation approximates has power ~0.8 there; the exact test a bit less (conservative).
    assert 0.79 <= _mcnemar_power(n, psi, mdd, exact=False) <= 0.85
    assert 0.75 <= _mcnemar_power(n, psi, mdd, exact=True) <= 0.80
    assert _mcnemar_power(n, psi, 0.75 * mdd, exact=False) < 0.6
    assert _mcnemar_power(n, psi, min(psi, 1.25 * mdd), exact=False) > 0.9


def test_mcnemar_mdd_edges():
    assert math.isnan(mcnemar_mdd(100, 0.0))  # never disagreed: no estimate
    assert mcnemar_mdd(80, 3 / 80) == math.inf  # 3 expected disagreements: nothing detectable
    assert mcnemar_mdd(1000, 0.2) < mcnemar_mdd(100, 0.2)
    with pytest.raises(FtlabError, match="power"):
        mcnemar_mdd(100, 0.2, power=1.0)


def test_format_p_never_prints_zero():
    # Two-sided bootstrap p moves in steps of 2/B: below that it prints as "< 2/B".
    assert format_p(0.0, resamples=10_000) == "< 0.0002"
    assert format_p(0.0, resamples=2000) == "< 0.001" and format_p(0.0008, resamples=2000) == "< 0.001"
    assert format_p(0.001, resamples=2000) == "0.001"
    assert format_p(0.0).startswith("< ") and float(format_p(0.0)[2:]) > 0
    assert format_p(2 * 0.5**30) == "1.86e-09"
    assert format_p(0.04492) == "0.0449" and format_p(1.0) == "1" and format_p(math.nan) == "n/a"


def test_pareto_front_on_a_hand_made_set():
    # Sizes (MB) and scores: X (4, .60), Y (2, .55), Z (2, .50: Y is as small and better), base (1, .40),
    # V (3, .55: Y is smaller at the same score). Front: base, Y, X.
    outcomes, sizes, latency = {("base", None, "none"): items((0, 16))}, {("base", "none"): 1e6}, {}
    for recipe, size, correct, lat in (("X", 4e6, 24, 0.5), ("Y", 2e6, 22, 0.3), ("Z", 2e6, 20, 0.1),
                                       ("V", 3e6, 22, 0.3)):
        outcomes[(recipe, 0, "none")] = items((0, correct))
        sizes[(recipe, "none")], latency[(recipe, "none")] = size, lat
    latency[("base", "none")] = 0.2
    samples, models = build(outcomes, sizes=sizes, latency=latency)
    p = analyze_study(samples, models, FAST).pareto.set_index("recipe")
    assert sorted(p.index[p.on_size_front]) == ["X", "Y", "base"]
    # Latency: Z (0.1, .50) and base (0.2, .40)... base is dominated by Z; Y and V tie at (0.3, .55):
    # neither is strictly better, both stay.
    assert sorted(p.index[p.on_latency_front]) == ["V", "X", "Y", "Z"]


def test_verdict_names_ties_and_differences_too_small_to_detect():
    base = items((0, 20), n=200)
    # P and Q differ from each other on 4 items of 200 only: tied. Q vs base: 12 gained, 8 lost of
    # 200 -> +0.02, far below the MDD: too small to detect. P gains 60: clearly significant.
    p_ = items((0, 80), n=200)
    q_ = items((0, 76), n=200)
    r_ = items((8, 20), (100, 112), n=200)
    samples, models = build({("base", None, "none"): base, ("P", None, "none"): p_, ("Q", None, "none"): q_,
                             ("R", None, "none"): r_})
    a = analyze_study(samples, models, FAST)
    v = a.verdicts[0]
    assert v.best == {"none": "P"} and v.tied == {"none": ["Q"]}
    assert v.undetectable == [("R", "none")]
    text = "\n".join(v.sentences)
    assert "Statistically tied with it after Holm correction: `Q`" in text
    assert verdict_text(a.verdicts).startswith("arith:\n  - Best recipe: `P`")
    assert re.search(r"Too small to detect .*`R` observed \+0\.0200, minimum detectable 0\.0\d+ \(n = 200 pairs\)", text)
    assert "Significantly above the baseline `base`" in text and "`P` +0.3000" in text
    row = a.vs_baseline.set_index("recipe").loc["R"]
    assert abs(row.diff_correct) < row.mdd and not row.significant


def test_verdict_when_the_study_cannot_detect_anything():
    base = items((0, 5), n=20)
    samples, models = build({("base", None, "none"): base, ("S", 0, "none"): items((0, 6), n=20),
                             ("T", 0, "none"): items((0, 5), n=20)})
    v = analyze_study(samples, models, FAST).verdicts[0]
    text = "\n".join(v.sentences)
    assert "`S` (one trained model) observed +0.0500, no difference detectable with so few disagreements" in text
    assert "Same outcome as the baseline `base` on every paired item: `T` (one trained model)" in text


def test_one_seed_per_recipe_is_said_plainly():
    samples, models = build({("base", None, "none"): items((0, 10)), ("A", 0, "none"): items((0, 30)),
                             ("B", 0, "none"): items((0, 12))})
    a = analyze_study(samples, models, FAST)
    assert a.one_seed and set(a.vs_baseline.level) == {"model"} and set(a.vs_baseline.test) == {"McNemar"}
    v = a.verdicts[0]
    # First what was tested, then the best *trained model* with its seed, never "best recipe" alone.
    assert v.sentences[0] == ONE_SEED and "recipe-level claims need at least 2 seeds per recipe" in ONE_SEED
    assert v.sentences[1].startswith("Best recipe: `A`, one trained model (seed 0), score 0.7500")
    assert "Every other trained model is significantly below it" in v.sentences[1]
    assert "`A` (one trained model) +0.5000" in "\n".join(v.sentences)
    # The McNemar test between two given models stays, with its own minimum detectable difference.
    row = a.vs_baseline.set_index("recipe").loc["A"]
    assert row.p_value == pytest.approx(sps.binomtest(0, 20, 0.5).pvalue)
    assert row.mdd == pytest.approx(mcnemar_mdd(40, 20 / 40))
    # With 2 seeds the same study is about recipes: no one-seed sentence.
    samples, models = build({("base", None, "none"): items((0, 10)), ("A", 0, "none"): items((0, 30)),
                             ("A", 1, "none"): items((0, 28)), ("B", 0, "none"): items((0, 12)),
                             ("B", 1, "none"): items((2, 12))})
    a = analyze_study(samples, models, FAST)
    assert not a.one_seed and ONE_SEED not in a.verdicts[0].sentences
    assert a.verdicts[0].sentences[0].startswith("Best recipe: `A`, score 0.7250 [")
    assert "over 2 seeds (seed std 0.0354; the interval covers seeds and items)" in a.verdicts[0].sentences[0]


def test_a_recipe_left_with_one_seed_is_tested_as_models_with_a_note():
    # B's seed 1 failed: B is one trained model; A keeps its recipe-level tests.
    samples, models = build({("base", None, "none"): items((0, 10)), ("A", 0, "none"): items((0, 30)),
                             ("A", 1, "none"): items((0, 28)), ("B", 0, "none"): items((0, 12))})
    a = analyze_study(samples, models, FAST)
    t = a.vs_baseline.set_index("recipe")
    assert t.loc["A", "level"] == "recipe" and (t.loc["B", "level"], t.loc["B", "test"]) == ("model", "McNemar")
    best = a.vs_best.set_index("recipe").loc["B"]
    # Two models of A against B's one: a paired t over items of the per-item means, models held fixed.
    assert (best.level, best.test) == ("model", "items, models fixed")
    a_mean = (np.array(items((0, 30))) + np.array(items((0, 28)))) / 2
    # The generalized inference over items alone is the paired t over items, to Monte Carlo error.
    ref = sps.ttest_rel(np.array(items((0, 12)), dtype=float), a_mean).pvalue
    assert best.p_value == pytest.approx(ref, abs=0.003)
    assert a.notes == ["B: one trained model each (a seed failed or was not run); their comparisons are about those "
                       "models, not recipes"]


def test_recipes_with_other_seed_sets_are_compared_as_independent_samples():
    outcomes = {("L", 0, "none"): items((0, 10)), ("L", 1, "none"): items((0, 12)),
                ("M", 0, "none"): items((0, 14)), ("M", 1, "none"): items((2, 12)), ("M", 2, "none"): items((0, 30))}
    samples, models = build(outcomes)
    a = analyze_study(samples, models, StudyAnalysisSettings(baseline="L", resamples=500))
    r = a.vs_baseline.iloc[0]
    # Every seed counts (M's seed 2 has no L seed 2 and needs none): 3 x 2 models on 40 items.
    ref = crossed_difference(mat(items((0, 10)), items((0, 12))), mat(items((0, 14)), items((2, 12)), items((0, 30))))
    assert (r.recipe, r.seeds, r.baseline_seeds, r.n_pairs) == ("M", 3, 2, 240)
    assert r.p_value == pytest.approx(ref.p_value, rel=1e-12) and r["diff"] == pytest.approx(ref.estimate)
    assert a.notes == []


def test_recipes_with_the_same_seeds_are_paired_unless_the_study_says_not():
    outcomes = {("L", 0, "none"): items((0, 10)), ("L", 1, "none"): items((0, 12)),
                ("M", 0, "none"): items((0, 14)), ("M", 1, "none"): items((2, 12))}
    samples, models = build(outcomes)
    r = analyze_study(samples, models, StudyAnalysisSettings(baseline="L", resamples=200)).vs_baseline.iloc[0]
    # Seeds 0 and 1 in both: the one-sample crossed test of M's seed k minus L's seed k.
    diff = mat(items((0, 14)), items((2, 12))) - mat(items((0, 10)), items((0, 12)))
    ref = crossed_mean(diff)
    assert (r.test, r.level) == ("seeds x items, paired by seed", "recipe")
    assert r.p_value == pytest.approx(ref.p_value, rel=1e-12) and r["diff"] == pytest.approx(ref.estimate)
    unpaired = analyze_study(samples, models, StudyAnalysisSettings(baseline="L", resamples=200, pair_seeds=False))
    u = unpaired.vs_baseline.iloc[0]
    assert u.test == "seeds x items"
    assert u.p_value == pytest.approx(crossed_difference(mat(items((0, 10)), items((0, 12))),
                                                         mat(items((0, 14)), items((2, 12)))).p_value, rel=1e-12)


def test_a_pooled_seed_spread_is_one_per_task_and_quant_variant():
    outcomes = {("L", 0, "none"): items((0, 10)), ("L", 1, "none"): items((0, 12)),
                ("M", 0, "none"): items((0, 14)), ("M", 1, "none"): items((2, 12)),
                ("N", 0, "none"): items((0, 20)), ("N", 1, "none"): items((0, 16)), ("N", 2, "none"): items((1, 9))}
    samples, models = build(outcomes)
    settings = StudyAnalysisSettings(baseline="L", resamples=200, seed_spread="pooled")
    a = analyze_study(samples, models, settings)
    mats = {"L": mat(items((0, 10)), items((0, 12))), "M": mat(items((0, 14)), items((2, 12))),
            "N": mat(items((0, 20)), items((0, 16)), items((1, 9)))}
    pool = seed_pool(list(mats.values()))
    assert pool.df == 1 + 1 + 2
    t = a.vs_baseline.set_index("recipe")
    assert set(t["test"]) == {"seeds x items, seed spread pooled"}  # pooled takes the seeds as independent
    for name in ("M", "N"):
        ref = crossed_difference(mats["L"], mats[name], pool=pool)
        assert t.loc[name, "p_value"] == pytest.approx(ref.p_value, rel=1e-12)
        assert t.loc[name, "ci_low"] == pytest.approx(ref.ci_low, rel=1e-9)
    # The ranking's intervals use the same pool.
    r = a.ranking.set_index("recipe").loc["N"]
    assert r.ci_high == pytest.approx(min(1.0, crossed_mean(mats["N"], pool=pool).ci_high), rel=1e-9)
    assert not any("pooled seed spread" in note for note in a.notes)
    # A recipe whose two seeds part by 30 of 40 items, where the others part by 0-2: the notes say so.
    wide = {**outcomes, ("W", 0, "none"): items((0, 2)), ("W", 1, "none"): items((0, 32))}
    notes = analyze_study(*build(wide), settings).notes
    assert [n for n in notes if "pooled seed spread" in n] == [
        f"arith (none): W's seeds vary more than the other recipes' pooled seed spread (F test p "
        f"{wider_than_pool([*mats.values(), mat(items((0, 2)), items((0, 32)))])[-1]:.2g}); its comparisons under "
        "analysis.seed_spread: pooled may be too sure; analysis.seed_spread: per-recipe does not assume the "
        "recipes vary alike"]
    assert StudyAnalysisSettings(seed_spread="shared").validate() == [
        "analysis.seed_spread='shared' is not one of: per-recipe, pooled"]


def test_sensitivity_against_the_difference_that_matters(study):
    samples, models, a = study
    line = next(s for s in a.verdicts[0].sentences if s.startswith("Sensitivity"))
    rows = a.vs_best[(a.vs_best.task == "arith") & (a.vs_best.seeds >= 2)]
    assert f"median {rows.mdd.median():.4f}" in line and "with 2, 3 seeds per recipe and 40 items" in line
    wide = analyze_study(samples, models, StudyAnalysisSettings(resamples=200, min_difference=0.02))
    line = next(s for s in wide.verdicts[0].sentences if s.startswith("Sensitivity"))
    assert "larger than the difference that matters (0.02)" in line and "`ftlab study plan`" in line
    loose = analyze_study(samples, models, StudyAnalysisSettings(resamples=200, min_difference=0.5))
    assert "The study was sized for the difference that matters (0.5)." in "\n".join(loose.verdicts[0].sentences)


def test_bad_input_is_a_one_line_error():
    samples, models = build({("base", None, "none"): BASE, ("A", 0, "none"): A[0]})
    with pytest.raises(FtlabError, match="baseline 'lora' is not a recipe of the study; evaluated: A, base"):
        analyze_study(samples, models, StudyAnalysisSettings(baseline="lora"))
    with pytest.raises(FtlabError, match="samples frame lacks column\\(s\\) score"):
        analyze_study(samples.drop(columns="score"), models, FAST)
    with pytest.raises(FtlabError, match="models frame lacks column\\(s\\) size_bytes"):
        analyze_study(samples, models.drop(columns="size_bytes"), FAST)
    with pytest.raises(FtlabError, match="answered item 0 of arith twice"):
        analyze_study(pd.concat([samples, samples.iloc[:1]]), models, FAST)
    twice = samples.assign(model=samples["model"].where(samples.index < N, "A-copy"), recipe="A", seed=0)
    with pytest.raises(FtlabError, match="recipe 'A' \\(seed 0, quant none\\) has several models on arith: A-copy, base-sx-none"):
        analyze_study(twice, models, StudyAnalysisSettings(baseline="A", resamples=10))
    with pytest.raises(ConfigError) as err:
        analyze_study(samples, models, StudyAnalysisSettings(alpha=0, resamples=0))
    assert len(err.value.problems) == 2
    with pytest.raises(FtlabError, match="no evaluated samples"):
        analyze_study(samples.iloc[0:0], models, FAST)


def _md_table(md: str, header_start: str) -> pd.DataFrame:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return pd.DataFrame(rows[2:], columns=rows[0])


def test_report_files_are_self_contained_and_never_print_p_zero(study, tmp_path):
    samples, models, _ = study
    # A task with one seed, so single-model McNemar rows are in the report too: GPTQ loses all 30.
    solo = {("base", None, "none"): BASE, ("B", 0, "none"): items((0, 30)),
            ("B", 0, "GPTQ"): lose_first(items((0, 30)), 30)}
    s2, m2 = build(solo, task="solo")
    samples, models = pd.concat([samples, s2], ignore_index=True), pd.concat([models, m2], ignore_index=True)
    out = tmp_path / "studies" / "demo"
    written = write_report(samples, models, FAST, out, title="demo study",
                           study_summary={"study": "examples/demo-study.yaml", "jobs": 12})
    expected = {"report.md", "report.html", "frame.parquet", "frame.csv", "ranking.csv", "vs_baseline.csv",
                "vs_best.csv", "recovery.csv", "pareto.csv", "plots/scores.png", "plots/recovery.png", "plots/pareto.png"}
    assert set(written) == expected and all((out / name).is_file() for name in expected)
    assert not list(out.rglob("*.tmp"))
    tidy = pd.read_parquet(out / "frame.parquet")
    assert len(tidy) == len(models) and list(tidy.columns[:4]) == ["recipe", "seed", "quant", "task"]
    assert list(tidy.columns[-2:]) == ["accuracy", "fidelity_top1"]
    assert len(pd.read_csv(out / "frame.csv")) == len(models)

    page = (out / "report.html").read_text()
    assert "http" not in page and "<link" not in page and "<script" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    md = (out / "report.md").read_text()
    assert "![score by recipe](plots/scores.png)" in md and "## Verdict" in md and "### arith" in md
    # The solo GPTQ loss (30 to 0) has McNemar p = 2^-29. The CSV keeps the raw bootstrap p of the
    # GPTQ model against the base (no resample crossed zero: 0), which prints as "< 0.001".
    assert "1.86e-09" in md and "### solo" in md
    assert pd.read_csv(out / "vs_baseline.csv").query("task == 'solo' and quant == 'GPTQ'").bootstrap_p.iloc[0] == 0
    assert format_p(0.0, resamples=FAST.resamples) == "< 0.001"
    for text in (md, page):
        assert not re.search(r"p = 0(\.0*)?(?![.\d])", text)
    table = _md_table(md, "| task | quant | recipe | baseline at |")
    assert len(table) == 11 and set(table["level"]) == {"recipe", "model"}
    assert set(table["test"]) == {"seeds x items", "McNemar"}
    for column in ("p", "Holm p"):
        assert not any(re.fullmatch(r"0(\.0*)?", cell) for cell in table[column])
    recovery = _md_table(md, "| task | recipe | quant | level |")
    assert recovery.set_index("task").loc["solo", "p"] == "1.86e-09"
    assert "1.86e-09" in (out / "report.html").read_text()


def test_report_drops_a_chart_the_study_no_longer_has(study, tmp_path):
    samples, models, _ = study
    write_report(samples, models, FAST, tmp_path, title="t", study_summary={})
    assert (tmp_path / "plots" / "recovery.png").exists()
    unquantized = samples[samples.quant == "none"]
    written = write_report(unquantized, models[models.quant == "none"], FAST, tmp_path, title="t", study_summary={})
    assert "plots/recovery.png" not in written and not (tmp_path / "plots" / "recovery.png").exists()
    assert "Quantization recovery" not in (tmp_path / "report.md").read_text()
    with pytest.raises(FtlabError, match="is a file"):
        write_report(samples, models, FAST, tmp_path / "report.md", title="t", study_summary={})
