"""Inference about recipes when both the trained models (seeds) and the items are samples.

Every trained model of a study answers the same items, so seeds and items are *crossed*. A
recipe's score is then uncertain for two reasons: another seed would train another model (its
initialisation, data order and dropout), and other items would give other scores. A test that
sees only one of them answers a narrower question than "does recipe B beat recipe A": pooling
(seed, item) pairs as independent (McNemar over all pairs) ignores the first, and a t-test on
per-seed scores treats the items as fixed.

The model, for recipe r, trained model (seed) s and item i:

    y_rsi = mu_r + u_rs + v_i + (rv)_ri + w_rsi

u_rs ~ (0, s2_seed,r): the trained model's own luck, shared by all its items;
v_i: the item's difficulty, shared by every model (it cancels in any difference on the same items);
(rv)_ri: how much the recipe suits this item, shared by the recipe's seeds;
w_rsi ~ (0, s2_cell,r): the trained model's own quirk on the item.

For one recipe with S seeds and n items, the mean y.. has
    Var = s2_seed / S + (s2_item + s2_cell / S) / n,
and for two recipes trained independently (seed k of one recipe shares no random draw with seed
k of the other that the analysis relies on; docs/study.md says why they are not paired),
    Var(ybar_B - ybar_A) = s2_seed,A / S_A + s2_seed,B / S_B + Var_i(delta_i) / n,
delta_i = the item's mean over B's seeds minus its mean over A's seeds.

Estimators, from the balanced two-way layout of each recipe's S x n matrix:
    m_s = per-model means; s2_rows = their variance (ddof 1), E = s2_seed + s2_cell / n;
    MS_res = sum (y_si - m_s - c_i + y..)^2 / ((S - 1)(n - 1)), E = s2_cell (c_i: item means);
    seed part  = sum over seeded sides of s2_rows / S   (each side's per-model scores, as a t-test
                 on them would use: their spread holds the models' own item noise too);
    item part  = max(0, Var_i(delta_i) / n - sum over seeded sides of MS_res / (S n)),
                 the item sampling of what the seeds share (the recipes' per-item difference), its
                 cell noise taken out because the seed part already holds it;
    V^ = seed part + item part.
Untruncated, V^ is unbiased (E[Var_i(delta_i)] = s2_item + s2_cell,A / S_A + s2_cell,B / S_B); it
is the two-way cluster-robust variance (clusters: trained models and items, minus their
intersection; Cameron, Gelbach & Miller 2011, JBES 29:238) written with the ANOVA estimates of a
crossed random-effects design (generalizability theory; Brennan 2001). The truncation at 0 falls
on the item part, estimated with n - 1 degrees of freedom, never on the seed part, which with 2 or
3 seeds has only 1 or 2: dropping a seed term whenever its noisy estimate came out small made the
test too liberal at 2 seeds (5.7% at alpha 5% in simulation), keeping it does not. An unseeded
side (a base snapshot: one deterministic model) has no seed term, and its item interactions are
part of delta_i. One recipe's own score uses the same formulas with c_i in place of delta_i.

The test: t = estimate / sqrt(V^) against Student's t with Satterthwaite's (1946) degrees of
freedom, df = V^2 / sum_k (term_k^2 / df_k), over the terms s2_rows / S (df S - 1) and, when the
item part is kept, Var_i(delta_i) / n (df n - 1) and each -MS_res / (S n) (df (S - 1)(n - 1)).
With 2 or 3 seeds the seed terms dominate and df is small: the test is as cautious as the seeds
make it, and tests/test_verdict_calibration.py shows by simulation that its false-positive rate
stays at or below alpha (benchmarks/verdict_calibration.md). A side with one trained model has
no estimable seed spread: recipe-level inference needs at least 2 seeds per seeded side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

from ftlab.errors import FtlabError


@dataclass(frozen=True)
class SeedSide:
    """One recipe's S x n outcome matrix summarised for the variance (or, in a plan, the
    expectations of those summaries)."""

    seeds: int  # trained models (1 for an unseeded, deterministic model)
    row_var: float  # s2_rows: variance of the per-model scores (ddof 1); 0 when unseeded
    cell_var: float  # MS_res: the model x item residual; 0 when unseeded

    def spread(self, n_items: int) -> float:
        """s2_seed^: the between-model variance of the score beyond the models' item noise."""
        return max(0.0, self.row_var - self.cell_var / n_items)


@dataclass(frozen=True)
class Design:
    """What sets a comparison's precision: the seeded sides and the item part's raw term
    Var_i(delta_i) / n on `items` items. Built from a study's estimates (`CrossedResult.design`)
    or from a plan's assumptions (`VarianceModel.design`)."""

    sides: tuple[SeedSide, ...]  # seeded sides only
    item_raw: float
    items: int

    def terms(self, sides=None, item_raw=None) -> tuple[list[tuple], object, object]:
        """The Satterthwaite terms of V^ and its seed and item parts (see the module's formulas);
        `sides` / `item_raw` may be arrays of draws of the same quantities."""
        sides = self.sides if sides is None else sides
        item_raw = self.item_raw if item_raw is None else item_raw
        n = self.items
        seed_terms = [(side.row_var / side.seeds, side.seeds - 1) for side in sides]
        cell_terms = [(-side.cell_var / (side.seeds * n), (side.seeds - 1) * (n - 1)) for side in sides]
        item_part = item_raw + sum(v for v, _ in cell_terms)
        kept = item_part > 0
        terms = seed_terms + [(np.where(kept, v, 0.0), d) for v, d in [(item_raw, n - 1)] + cell_terms]
        return terms, sum(v for v, _ in seed_terms), np.where(kept, item_part, 0.0)

    def variance(self) -> tuple[float, float]:
        """(V^, Satterthwaite df) at these values."""
        terms, _, _ = self.terms()
        return satterthwaite([(float(v), d) for v, d in terms])

    def power(self, difference: float, alpha: float, *, draws: int = 20_000) -> float:
        """Power of the two-sided crossed t-test when these values are the truth. The test estimates
        its variance and df from few seeds, so the power is averaged over their sampling
        distributions (normal theory: each mean square is its expectation times chi2_df / df,
        independent of the estimate), by a seeded Monte Carlo of `draws` (sd of the result below
        0.0035); given them the rejection probability is exact. The textbook shortcut, the
        noncentral t at the expected variance and df, overstates the power by 5 points at 2 seeds,
        and (t_(1-alpha/2,df) + t_(power,df)) x SE has a power of 0.50 to 0.65 there
        (tests/test_crossed.py)."""
        return self._power_curve(alpha, draws)(difference)

    def _power_curve(self, alpha: float, draws: int = 20_000):
        """power(difference) over one set of draws of the estimated variance and df."""
        rng = np.random.default_rng(0)
        n = self.items

        def drawn(expected: float, df: float) -> np.ndarray:
            return expected * rng.chisquare(df, draws) / df

        sides = [SeedSide(side.seeds, drawn(side.row_var, side.seeds - 1),
                          drawn(side.cell_var, (side.seeds - 1) * (n - 1))) for side in self.sides]
        terms, seed_part, item_part = self.terms(sides, drawn(self.item_raw, n - 1))
        est_var = seed_part + item_part
        df = est_var**2 / sum(v**2 / d for v, d in terms)
        half = _sps.t.ppf(1 - alpha / 2, df) * np.sqrt(est_var)  # the test rejects when |estimate| > half
        sd = math.sqrt(self.variance()[0])

        def power(difference: float) -> float:
            d = abs(difference)
            return float(np.mean(_sps.norm.sf((half - d) / sd) + _sps.norm.cdf((-half - d) / sd)))

        return power

    def mdd(self, alpha: float, power: float) -> float:
        """The smallest true difference this design detects with `power`, found by bisection on
        `power()`. NaN when the design has no variance (nothing varied)."""
        var, _ = self.variance()
        if not var > 0:
            return math.nan
        curve = self._power_curve(alpha)
        lo, hi = 0.0, math.sqrt(var)
        while curve(hi) < power:
            lo, hi = hi, hi * 2
        while hi - lo > 1e-4 * hi:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if curve(mid) < power else (lo, mid)
        return hi


@dataclass(frozen=True)
class CrossedResult:
    """A mean (or a difference of means) over trained models x items, with both variance sources."""

    estimate: float
    se: float
    df: float
    t: float
    p_value: float  # two-sided; NaN when there is no variation to test against
    ci_low: float
    ci_high: float
    confidence: float
    seed_part: float  # the seed terms of Var (sum of s2_rows / S)
    item_part: float  # the item sampling of what the seeds share
    design: Design  # the estimates behind it, for the minimum detectable difference

    @property
    def n_items(self) -> int:
        return self.design.items

    def mdd(self, alpha: float, power: float) -> float:
        """The minimum detectable difference of this design (its estimates taken as the truth):
        the difference the test detects with `power` at `alpha`, seed spread included."""
        return self.design.mdd(alpha, power)


def _matrix(y, what: str) -> np.ndarray:
    a = np.asarray(y, dtype=float)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 2:
        raise FtlabError(f"{what} must be a (models x items) matrix with at least 2 items, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise FtlabError(f"{what} holds a missing or infinite score; every model must answer every item")
    return a


def seed_side(y: np.ndarray, *, seeded: bool) -> SeedSide:
    """The per-model spread and the model x item residual of one recipe's S x n matrix."""
    s, n = y.shape
    if not seeded:
        if s != 1:
            raise FtlabError(f"an unseeded configuration is one model, got {s}")
        return SeedSide(1, 0.0, 0.0)
    if s < 2:
        raise FtlabError("recipe-level inference needs at least 2 seeds per trained recipe (one model's "
                         "seed spread cannot be estimated)")
    rows = y.mean(axis=1)
    resid = y - rows[:, None] - y.mean(axis=0)[None, :] + y.mean()
    return SeedSide(s, float(rows.var(ddof=1)), float((resid**2).sum() / ((s - 1) * (n - 1))))


def satterthwaite(terms) -> tuple[float, float]:
    """(sum of the terms, Satterthwaite's degrees of freedom) for (value, df) variance terms."""
    var = float(sum(v for v, _ in terms))
    denom = sum(v**2 / d for v, d in terms if v)
    return var, (var**2 / denom if denom > 0 else math.nan)


def _result(estimate: float, sides: list[SeedSide], item_values: np.ndarray, confidence: float) -> CrossedResult:
    if not 0 < confidence < 1:
        raise FtlabError(f"confidence={confidence} must be between 0 and 1 (e.g. 0.95)")
    n = item_values.size
    design = Design(tuple(side for side in sides if side.seeds > 1), float(item_values.var(ddof=1) / n), n)
    terms, seed_part, item_part = design.terms()
    var, df = satterthwaite([(float(v), d) for v, d in terms])
    if var <= 0:  # every model scored every item alike: nothing to test a difference against
        p = 1.0 if estimate == 0 else math.nan
        return CrossedResult(estimate, 0.0, math.nan, math.nan, p, estimate, estimate, confidence, 0.0, 0.0, design)
    se = math.sqrt(var)
    t = estimate / se
    p = float(2 * _sps.t.sf(abs(t), df))
    half = float(_sps.t.ppf(0.5 + confidence / 2, df)) * se
    return CrossedResult(float(estimate), se, float(df), float(t), min(1.0, p), estimate - half, estimate + half,
                         confidence, float(seed_part), float(item_part), design)


def crossed_mean(y, *, seeded: bool = True, confidence: float = 0.95) -> CrossedResult:
    """The mean of an S x n matrix (S trained models of one recipe on the same n items) with both
    variance sources; `seeded=False` for one deterministic model (items only). Also the paired
    difference of two matrices whose rows are the same trained models (a quantized model minus its
    own source): pass their difference."""
    y = _matrix(y, "the outcome matrix")
    side = seed_side(y, seeded=seeded)
    return _result(float(y.mean()), [side], y.mean(axis=0), confidence)


def crossed_difference(ya, yb, *, seeded_a: bool = True, seeded_b: bool = True,
                       confidence: float = 0.95) -> CrossedResult:
    """mean(B) - mean(A) for two recipes whose trained models are independent draws, on the same
    n items (columns aligned): seed spread of each side plus item sampling of the paired
    per-item difference."""
    a = _matrix(ya, "recipe A's outcome matrix")
    b = _matrix(yb, "recipe B's outcome matrix")
    if a.shape[1] != b.shape[1]:
        raise FtlabError(f"the two recipes must answer the same items, got {a.shape[1]} and {b.shape[1]}")
    sides = [seed_side(a, seeded=seeded_a), seed_side(b, seeded=seeded_b)]
    delta = b.mean(axis=0) - a.mean(axis=0)
    return _result(float(delta.mean()), sides, delta, confidence)


def crossed_ratio(source, quantized, *, seeded: bool = True, confidence: float = 0.95) -> tuple[float, float, float]:
    """Ratio mean(Q) / mean(S) of paired matrices (row k of both is the same trained model) with a
    delta-method interval: the linearised variable L = Q - R * S has mean 0 at the estimate and
    Var(R^) ~ Var(mean L) / mean(S)^2, taken with the crossed variance of L. NaN when mean(S) is 0."""
    s = _matrix(source, "the source outcome matrix")
    q = _matrix(quantized, "the quantized outcome matrix")
    if s.shape != q.shape:
        raise FtlabError(f"source and quantized matrices differ in shape: {s.shape} vs {q.shape}")
    if s.mean() <= 0:
        return math.nan, math.nan, math.nan
    ratio = float(q.mean() / s.mean())
    lin = crossed_mean(q - ratio * s, seeded=seeded, confidence=confidence)
    half = (lin.ci_high - lin.ci_low) / 2 / float(s.mean())
    return ratio, ratio - half, ratio + half


# ---------------------------------------------------------------------------------------------
# Planning: power of a recipe-vs-recipe comparison for a designed number of seeds and items


@dataclass(frozen=True)
class VarianceModel:
    """The components that set a recipe comparison's precision (per recipe, assumed equal):
    seed_var = s2_seed (between trained models, beyond item noise); item_var = Var_i of the
    per-item difference between two recipes' expected outcomes (what does not average out over
    seeds); cell_var = s2_cell (a trained model's own per-item quirk, which does)."""

    seed_var: float
    item_var: float
    cell_var: float

    def design(self, seeds: int, items: int) -> Design:
        """Two recipes with `seeds` each on `items`: the estimator's summaries at their expectations."""
        if seeds < 2 or items < 2:
            raise FtlabError("a recipe comparison needs at least 2 seeds and 2 items per recipe")
        side = SeedSide(seeds, self.seed_var + self.cell_var / items, self.cell_var)
        return Design((side, side), (self.item_var + 2 * self.cell_var / seeds) / items, items)

    def power(self, difference: float, seeds: int, items: int, alpha: float) -> float:
        return self.design(seeds, items).power(difference, alpha)


def items_for_power(model: VarianceModel, difference: float, seeds: int, *, alpha: float, power: float,
                    max_items: int) -> int | None:
    """Fewest items (2 .. max_items) that give `power` with `seeds` per recipe; None when even
    max_items does not (the seed spread alone caps the power)."""
    if model.power(difference, seeds, max_items, alpha) < power:
        return None
    lo, hi = 2, max_items
    while lo < hi:
        mid = (lo + hi) // 2
        if model.power(difference, seeds, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo
