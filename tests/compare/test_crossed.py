"""Recipe-level inference over seeds x items (`ftlab.compare.crossed`) against independent references.

References: statsmodels' linear mixed model (REML, crossed random effects) and scipy's Welch
t-test on per-seed scores, run on fixed frames; their results are recorded here as facts (the
statsmodels runs once, scipy live). Where the references and ftlab differ, the test says why.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ftlab.compare.crossed import VarianceModel, crossed_difference, crossed_mean, crossed_ratio, items_for_power, seed_side
from ftlab.errors import FtlabError


def matrix(rows: list[str]) -> np.ndarray:
    return np.array([[int(c) for c in r] for r in rows], dtype=float)


# Two recipes x 3 seeds x 80 items of 0/1 outcomes, drawn once from ftlab.compare.simulate.StudyModel(
# level=-0.6, seed_sd=0.3, interaction_sd=0.8, difference=0.3) with np.random.default_rng(0) and kept
# as text so the facts below do not depend on numpy's generator streams.
FRAME_A = matrix([
    "00011010000001000001010010010001011100110111011010001110110000100111000100100101",
    "00100010100000000011110110000001001001110111101111001100110011101011100110100101",
    "00101110000100000111000010000100011110100111000111111010010000100011100101100101"])
FRAME_B = matrix([
    "10101011101000000010110110110101010001110111011111100001110000111011100111101011",
    "00100011000100000100010110000100111010010111101111000000110000101011000110100001",
    "11100111101100000111010111001100011110010101011111000100010000111011100110100001"])

# The same model without the recipe x item interaction, seed_sd=0.4, 3 seeds x 60 items,
# np.random.default_rng(7): the item part's estimate is below 0 and truncated.
TRUNC_A = matrix([
    "010000000000000000000001000000001000100000001011010010000011",
    "110001010110000000000001010000010010001000001001111001010110",
    "000000110100110101000100100001000011001100011010000010100010"])
TRUNC_B = matrix([
    "010000010011100000000100100001010000010011001010010101000010",
    "001000110001000000000000000000000000010000001011010001000110",
    "001000110010100100010001010001000100111000011010010011011111"])


def test_standard_error_and_components_equal_a_mixed_models_reml_fit():
    # Reference: statsmodels 0.15.0, run once on FRAME_A/FRAME_B in long form (columns recipe, model,
    # item, y; ritem = recipe + item):
    #   smf.mixedlm("y ~ C(recipe)", df, groups=1, re_formula="0", vc_formula={"model": "0+C(model)",
    #               "item": "0+C(item)", "ritem": "0+C(ritem)"}).fit(reml=True, method="lbfgs")
    #   C(recipe)[T.B] 0.054167, Std.Err. 0.056858, P>|z| 0.340758; variance components item 0.083437,
    #   model 0.002294, ritem 0.019595; scale (residual) 0.145622.
    res = crossed_difference(FRAME_A, FRAME_B)
    assert res.estimate == pytest.approx(0.054167, abs=1e-6)
    # In a balanced crossed design REML's estimates equal the ANOVA (moment) estimates when all lie
    # inside the parameter space, so the standard errors agree to the optimiser's tolerance.
    assert res.se == pytest.approx(0.056858, abs=2e-6)
    sa, sb = seed_side(FRAME_A, seeded=True), seed_side(FRAME_B, seeded=True)
    n, s = 80, 3
    cell = (sa.cell_var + sb.cell_var) / 2
    assert cell == pytest.approx(0.145622, abs=1e-6)
    assert (sa.row_var + sb.row_var) / 2 - cell / n == pytest.approx(0.002294, abs=1e-6)
    delta = FRAME_B.mean(axis=0) - FRAME_A.mean(axis=0)
    assert (delta.var(ddof=1) - 2 * cell / s) / 2 == pytest.approx(0.019595, abs=2e-6)
    # Where they differ: statsmodels refers z = 0.95 to the normal distribution (p 0.341), as if the
    # variance were known; ftlab's generalized test carries the uncertainty of each variance
    # estimate (here 2 degrees of freedom per recipe for the seed spread) into the p-value: 0.478.
    # The normal reference is what makes a 3-seed study look surer than it is.
    assert res.p_value == pytest.approx(0.478, abs=0.002) and res.p_value > 0.340758
    # The two parts: the seed part is Welch's variance of the per-seed scores (scipy, live); the item
    # part (what the recipes' seeds share per item) adds to it.
    welch = sps.ttest_ind(FRAME_B.mean(axis=1), FRAME_A.mean(axis=1), equal_var=False)
    welch_var = FRAME_A.mean(axis=1).var(ddof=1) / 3 + FRAME_B.mean(axis=1).var(ddof=1) / 3
    assert res.seed_part == pytest.approx(welch_var, rel=1e-12)
    assert res.item_part > 0 and res.se**2 == pytest.approx(res.seed_part + res.item_part, rel=1e-12)
    assert res.p_value > welch.pvalue  # 0.389: Welch leaves out the items' share of the uncertainty


def test_a_truncated_item_part_leaves_welchs_variance_and_reml_lands_on_the_boundary():
    # Reference: the same statsmodels call on TRUNC_A/TRUNC_B: Std.Err. 0.080122, P>|z| 0.781507,
    # ritem variance 0 (on the boundary; statsmodels warns "The MLE may be on the boundary").
    res = crossed_difference(TRUNC_A, TRUNC_B)
    assert res.item_part == 0
    assert res.se == pytest.approx(0.080122, abs=2e-6)
    welch = sps.ttest_ind(TRUNC_B.mean(axis=1), TRUNC_A.mean(axis=1), equal_var=False)
    assert res.se**2 == pytest.approx(welch_variance(TRUNC_A, TRUNC_B), rel=1e-12)
    # Same variance as Welch's test on the seed scores; the p-value is the generalized (Tsui &
    # Weerahandi) Behrens-Fisher one, more cautious with 2 degrees of freedom per side: 0.840 vs 0.796.
    assert res.p_value == pytest.approx(0.840, abs=0.003) and res.p_value > welch.pvalue


def welch_variance(a: np.ndarray, b: np.ndarray) -> float:
    return a.mean(axis=1).var(ddof=1) / a.shape[0] + b.mean(axis=1).var(ddof=1) / b.shape[0]


def test_one_seed_term_alone_is_exactly_students_t():
    # With only one variance term the fiducial p-value is the t-test's (the fiducial distribution of a
    # normal variance turns Z into Student's t): three trained models that each score all items alike
    # (no item part) give the one-sample t on their per-seed scores, to Monte Carlo error (scipy, live).
    y = np.repeat(np.array([[0.10], [0.30], [0.26]]), 40, axis=1)
    res = crossed_mean(y)
    assert res.item_part == 0 and res.seed_part == pytest.approx(np.var([0.10, 0.30, 0.26], ddof=1) / 3)
    ref = sps.ttest_1samp([0.10, 0.30, 0.26], 0.0)
    assert res.p_value == pytest.approx(ref.pvalue, abs=0.002)
    lo, hi = ref.confidence_interval(0.95)
    assert (res.ci_low, res.ci_high) == (pytest.approx(lo, abs=0.01 * (hi - lo)), pytest.approx(hi, abs=0.01 * (hi - lo)))


def test_a_generalised_estimating_equation_clustered_by_model_is_too_sure():
    # Reference: statsmodels 0.15.0 smf.gee("y ~ C(recipe)", groups="model", data=df).fit() on FRAME:
    # robust SE 0.042763, p 0.205. Clustering by trained model alone, with 6 clusters and no
    # small-sample correction, gives a smaller SE than both the mixed model and ftlab (0.0569) and
    # ignores that the items are shared: ftlab does not use it.
    res = crossed_difference(FRAME_A, FRAME_B)
    assert res.se > 0.042763 * 1.3


def test_one_recipe_and_unseeded_models_reduce_to_scipy():
    # One deterministic model: items only, the one-sample t over items (scipy.stats.ttest_1samp), to
    # Monte Carlo error.
    y = FRAME_A[:1]
    res = crossed_mean(y, seeded=False)
    ref = sps.ttest_1samp(y[0], 0.0)
    assert res.se == pytest.approx(sps.sem(y[0]), rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, abs=0.002)
    lo, hi = ref.confidence_interval(0.95)
    assert (res.ci_low, res.ci_high) == (pytest.approx(lo, abs=0.002), pytest.approx(hi, abs=0.002))
    # Two deterministic models on the same items: the paired t over items (scipy.stats.ttest_rel).
    res = crossed_difference(FRAME_A[:1], FRAME_B[:1], seeded_a=False, seeded_b=False)
    assert res.p_value == pytest.approx(sps.ttest_rel(FRAME_B[0], FRAME_A[0]).pvalue, abs=0.002)
    # A seeded recipe against an unseeded base: only the recipe has a seed term.
    res = crossed_difference(FRAME_A[:1], FRAME_B, seeded_a=False)
    assert res.seed_part == pytest.approx(FRAME_B.mean(axis=1).var(ddof=1) / 3, rel=1e-12)
    # One recipe's score: its per-seed spread plus the item difficulty part.
    one = crossed_mean(FRAME_A)
    assert one.estimate == pytest.approx(FRAME_A.mean()) and one.seed_part == pytest.approx(
        FRAME_A.mean(axis=1).var(ddof=1) / 3)
    assert one.item_part > one.seed_part  # items differ far more than these seeds


def test_one_seed_cannot_support_a_recipe_claim_and_bad_shapes_are_one_line_errors():
    with pytest.raises(FtlabError, match="at least 2 seeds"):
        crossed_difference(FRAME_A[:1], FRAME_B)
    with pytest.raises(FtlabError, match="same items"):
        crossed_difference(FRAME_A, FRAME_B[:, :40])
    with pytest.raises(FtlabError, match="missing or infinite"):
        crossed_mean(np.where(FRAME_A == 1, np.nan, 0.0))
    # No variation at all: nothing to test against; equal means are p = 1, unequal ones untestable.
    same = np.ones((2, 10))
    assert crossed_difference(same, same).p_value == 1.0
    assert math.isnan(crossed_difference(same, same * 0).p_value)


def test_ratio_interval_is_the_delta_method_on_the_same_variance():
    src = FRAME_B
    q = FRAME_B.copy()
    q[:, :6] = 0  # the quantized models lose their answers on the first 6 items
    ratio, lo, hi = crossed_ratio(src, q)
    assert ratio == pytest.approx(q.mean() / src.mean())
    lin = crossed_mean(q - ratio * src)
    assert (hi - lo) / 2 == pytest.approx((lin.ci_high - lin.ci_low) / 2 / src.mean(), rel=1e-12)
    assert lo < ratio < hi and ratio < 1
    assert all(math.isnan(v) for v in crossed_ratio(src * 0, q))


def _simulated_power(model: VarianceModel, diff: float, seeds: int, items: int, sims: int, rng,
                     paired: bool = True) -> float:
    """Rejection rate of the crossed test (paired by seed, or unpaired) on the linear crossed model
    with normal effects."""
    rejected = 0
    for _ in range(sims):
        v = rng.normal(0, 1.0, items)  # item difficulty, shared (cancels)
        sides = []
        for shift in (0.0, diff):
            g = rng.normal(0, math.sqrt(model.item_var / 2), items)
            u = rng.normal(0, math.sqrt(model.seed_var), (seeds, 1))
            w = rng.normal(0, math.sqrt(model.cell_var), (seeds, items))
            sides.append(shift + v + g + u + w)
        a, b = sides
        rejected += (crossed_mean(b - a) if paired else crossed_difference(a, b)).p_value <= 0.05
    return rejected / sims


@pytest.mark.parametrize("seeds, items, paired", [(2, 100, True), (3, 300, True), (5, 100, True), (3, 300, False)])
def test_planned_power_and_mdd_match_the_simulated_rejection_rate(seeds, items, paired):
    model = VarianceModel(seed_var=0.03**2, item_var=0.3**2, cell_var=0.4**2)
    design = model.design(seeds, items, paired=paired)
    rng = np.random.default_rng(seeds * 1000 + items)
    diff = 3 * math.sqrt(design.variance())
    planned = design.power(diff, alpha=0.05)
    simulated = _simulated_power(model, diff, seeds, items, 2000, rng, paired)
    # Within 0.035 (3 Monte Carlo sd of 2000 studies) of the rate the real test rejects at.
    assert abs(planned - simulated) < 0.035, (planned, simulated)
    # The minimum detectable difference is where that power is 0.8, and the real test gets there.
    mdd = design.mdd(alpha=0.05, power=0.8)
    assert design.power(mdd, alpha=0.05) == pytest.approx(0.8, abs=1e-3)
    assert abs(_simulated_power(model, mdd, seeds, items, 2000, rng, paired) - 0.8) < 0.035
    # The textbook shortcut (z_(1-a/2) + z_(0.8)) x SE ignores that the test estimates its variance
    # from few seeds: it is below the MDD, most at 2 seeds.
    assert (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * math.sqrt(design.variance()) < mdd


def test_items_for_power_and_the_ceiling_set_by_seeds():
    model = VarianceModel(seed_var=0.02**2, item_var=0.2, cell_var=0.15)
    n = items_for_power(model, 0.05, 5, alpha=0.05, power=0.8, max_items=100_000)
    assert n is not None and model.power(0.05, 5, n, 0.05) >= 0.8 > model.power(0.05, 5, n - 1, 0.05)
    # More seeds need fewer items; with 2 seeds the seed spread alone keeps power below 0.8 for a
    # difference near it, however many items.
    assert items_for_power(model, 0.05, 10, alpha=0.05, power=0.8, max_items=100_000) < n
    assert items_for_power(model, 0.03, 2, alpha=0.05, power=0.8, max_items=100_000) is None
    # Pairing (the default) leaves S - 1 degrees of freedom for the seed spread, unpaired 2 (S - 1) in
    # two terms: with a seed spread this small, 5 seeds unpaired need fewer items (8,642 against 16,042).
    assert items_for_power(model, 0.05, 5, alpha=0.05, power=0.8, max_items=100_000, paired=False) < n
