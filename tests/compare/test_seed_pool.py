"""A seed spread pooled over a family's recipes (`ftlab.compare.crossed.SeedPool`,
`analysis.seed_spread: pooled`) against independent references, and its error rate measured on
simulated families: at or below alpha when the recipes' seeds vary alike, and what a recipe whose
seeds vary three times as much does to it.

References: scipy's pooled two-sample t-test and the pooled error of scipy's Tukey HSD (run live).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ftlab.compare.crossed import VarianceModel, crossed_difference, crossed_mean, seed_pool, wider_than_pool
from ftlab.compare.simulate import StudyModel

ALPHA = 0.05


def flat(scores: list[float], items: int = 40) -> np.ndarray:
    """Trained models that each score every item alike: no item part, no model x item residual."""
    return np.repeat(np.array(scores, dtype=float)[:, None], items, axis=1)


def test_two_recipes_pooled_are_the_pooled_two_sample_t():
    # 3 and 5 seeds: K = 2 + 4 degrees of freedom; scipy's equal-variance t-test is the reference.
    a, b = [0.31, 0.36, 0.29], [0.40, 0.35, 0.44, 0.37, 0.41]
    pool = seed_pool([flat(a), flat(b)])
    assert pool.df == 6
    res = crossed_difference(flat(a), flat(b), pool=pool)
    ref = sps.ttest_ind(b, a, equal_var=True)
    assert res.item_part == 0
    assert res.p_value == pytest.approx(ref.pvalue, abs=0.002)
    lo, hi = ref.confidence_interval(0.95)
    assert (res.ci_low, res.ci_high) == (pytest.approx(lo, abs=0.01 * (hi - lo)), pytest.approx(hi, abs=0.01 * (hi - lo)))
    # Each recipe's own spread instead: 2 and 4 degrees of freedom in two terms, a wider interval.
    assert crossed_difference(flat(a), flat(b)).half_width > res.half_width


def test_the_pool_of_many_recipes_is_the_error_tukey_hsd_uses():
    # Six recipes x 2 seeds: the pooled spread is the one-way ANOVA's mean squared error with 6 degrees
    # of freedom, read back from scipy's Tukey HSD interval (half-width q sqrt(MSE / 2 (2 / S))).
    scores = [[0.30, 0.34], [0.41, 0.37], [0.35, 0.36], [0.28, 0.33], [0.39, 0.45], [0.36, 0.31]]
    pool = seed_pool([flat(s) for s in scores])
    hsd = sps.tukey_hsd(*[np.array(s) for s in scores])
    ci = hsd.confidence_interval(0.95)
    q = sps.studentized_range.ppf(0.95, 6, 6)
    mse = ((ci.high[0, 1] - ci.low[0, 1]) / 2 / q) ** 2 * 2 / (2 / 2)
    assert pool.df == 6 and pool.spread == pytest.approx(mse, rel=1e-9)
    # A comparison's p-value is then Student's t with those 6 degrees of freedom.
    res = crossed_difference(flat(scores[0]), flat(scores[4]), pool=pool)
    t = (np.mean(scores[4]) - np.mean(scores[0])) / math.sqrt(mse * (1 / 2 + 1 / 2))
    assert res.p_value == pytest.approx(2 * sps.t.sf(abs(t), 6), abs=0.002)
    # And a recipe's own score interval uses the pool too (one-sample t with 6 degrees of freedom).
    own = crossed_mean(flat(scores[0]), pool=pool)
    assert own.half_width == pytest.approx(sps.t.isf(0.025, 6) * math.sqrt(mse / 2), rel=0.01)


def test_a_recipe_measured_on_few_items_weighs_less():
    # s2_rows,r estimates s2_seed + e_r, e_r = MS_res,r / n_r: the estimate solves
    # sum_r k_r s2_rows,r / (s2 + e_r) = K (Paule & Mandel), so a noisy recipe moves it less than
    # its share of the degrees of freedom would.
    rng = np.random.default_rng(3)
    def recipe(level: float, items: int) -> np.ndarray:  # 3 trained models whose scores differ by 0.08 sd
        return (rng.random((3, items)) < level + rng.normal(0, 0.08, (3, 1))).astype(float)

    few = recipe(0.5, 20)
    many = [recipe(p, 2000) for p in (0.4, 0.5, 0.6)]
    pool = seed_pool([few, *many])
    k, rows, noise = (np.array(c) for c in zip(*pool.terms))
    assert pool.spread > 0 and (k * rows / (pool.spread + noise)).sum() == pytest.approx(pool.df, rel=1e-6)
    # Weighting by degrees of freedom alone would count the 20-item recipe's noise as seed spread.
    assert noise[0] > 10 * noise[1:].max()
    # No negative spread: when every recipe's rows are below its item noise, the estimate is 0.
    alike = np.array([[1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 1, 0], [1, 1, 0, 0, 0, 1]], dtype=float)  # equal means
    assert seed_pool([alike, alike[::-1]]).spread == 0.0
    # Fiducial draws: positive, and their median near the estimate.
    assert pool.fiducial.min() >= 0 and np.median(pool.fiducial) == pytest.approx(pool.spread, rel=0.3)


def test_a_recipe_wider_than_the_others_pool_is_flagged_by_an_f_test():
    alike = [[0.30, 0.32], [0.41, 0.40], [0.35, 0.36], [0.28, 0.29], [0.39, 0.41]]
    wide = [0.20, 0.50]
    p = wider_than_pool([flat(s) for s in [*alike, wide]])
    # Flat rows (no item noise): its spread against the others' mean squared error, F(1, 5) (scipy).
    others = np.mean([np.var(s, ddof=1) for s in alike])
    assert p[-1] == pytest.approx(sps.f.sf(np.var(wide, ddof=1) / others, 1, 5), rel=1e-9) and p[-1] < 0.01
    assert min(p[:-1]) > 0.05
    assert np.isnan(wider_than_pool([flat(wide)])[0])  # nothing to compare it with


def test_pooling_plans_more_power_with_few_seeds():
    # 10 recipes x 2 seeds pool 10 degrees of freedom; each recipe's own spread has 1.
    model = VarianceModel(seed_var=0.03**2, item_var=0.3**2, cell_var=0.2)
    own = model.design(2, 300, paired=False)
    pooled = model.design(2, 300, pooled=10)
    assert pooled.variance() == pytest.approx(own.variance())  # the same variance ...
    assert pooled.mdd(0.05, 0.8) < 0.8 * own.mdd(0.05, 0.8)  # ... known with more degrees of freedom


def _family_rates(scales, sims: int, seed: int, own: bool, seeds: int = 2, items: int = 200) -> dict[str, np.ndarray]:
    """Six identical recipes (seed spreads scaled by `scales`) and their base; per pair of recipes and
    per recipe against the base, the share of families in which the test rejected at ALPHA with the
    pooled spread (and, with `own`, each recipe's own), and per recipe the share flagged as varying
    more than the others' pool (`wider_than_pool` below 0.05, the study report's note)."""
    model = StudyModel(level=0.4, item_sd=1.5, seed_sd=0.3, interaction_sd=0.3)
    rng = np.random.default_rng(seed)
    k = len(scales)
    out = {"pooled_pair": np.zeros((k, k)), "own_pair": np.zeros((k, k)), "pooled_base": np.zeros(k),
           "own_base": np.zeros(k), "flagged": np.zeros(k)}
    for _ in range(sims):
        recipes, base = model.draw_recipes(rng, [0.0] * k, seeds, items, scales)
        pool = seed_pool(list(recipes))
        out["flagged"] += np.array(wider_than_pool(list(recipes))) < 0.05
        for i in range(k):
            out["pooled_base"][i] += crossed_difference(base, recipes[i], seeded_a=False, pool=pool).p_value <= ALPHA
            out["own_base"][i] += own and crossed_difference(base, recipes[i], seeded_a=False).p_value <= ALPHA
            for j in range(i + 1, k):
                out["pooled_pair"][i, j] += crossed_difference(recipes[i], recipes[j], pool=pool).p_value <= ALPHA
                out["own_pair"][i, j] += own and crossed_difference(recipes[i], recipes[j]).p_value <= ALPHA
    return {name: v / sims for name, v in out.items()}


SIMS = 600
BOUND = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)  # 0.0767


@pytest.mark.slow
def test_pooled_comparisons_hold_alpha_when_seeds_vary_alike():
    # Measured over 1500 families (seed 21): the 15 pairs 0.050 on average, the 6 against the base
    # 0.047; each recipe's own spread 0.004 and 0.022 (2 seeds: one degree of freedom each).
    rates = _family_rates([1.0] * 6, SIMS, seed=21, own=False)
    pairs = rates["pooled_pair"][np.triu_indices(6, 1)]
    assert pairs.max() <= BOUND and rates["pooled_base"].max() <= BOUND, (pairs, rates["pooled_base"])
    assert pairs.mean() <= ALPHA + 0.01 and rates["pooled_base"].mean() <= ALPHA + 0.01
    assert rates["flagged"].mean() <= 0.05 + 0.02  # the report's note (an F test at 0.05) flags 0.02-0.05


@pytest.mark.slow
def test_a_recipe_whose_seeds_vary_three_times_as_much_is_too_sure_under_the_pool():
    # The assumption's price, recorded as a fact: one of six identical recipes with three times the
    # seed sd. Over 1500 families (seed 21) its comparisons with the others declared a difference in
    # 0.16-0.18 of them and against the base in 0.24, at alpha 0.05; each recipe's own spread kept
    # them at 0.005 and 0.041. The other recipes' pairs fell to 0.024 (the wide recipe widens the pool).
    rates = _family_rates([3.0] + [1.0] * 5, 300, seed=22, own=True)
    assert rates["pooled_pair"][0, 1:].mean() > 0.10 and rates["pooled_base"][0] > 0.15
    assert rates["own_pair"][0, 1:].max() <= 0.05 and rates["own_base"][0] <= 0.08
    # The report's note flags the wide recipe in a third of these studies (0.33), the others in
    # 0.02-0.03: a warning worth printing, not a safeguard.
    assert 0.25 <= rates["flagged"][0] <= 0.8 and rates["flagged"][1:].mean() <= 0.06, rates["flagged"]
