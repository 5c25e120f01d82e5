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
k of the other that the analysis relies on; docs/study.md says when to pair them),
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
crossed random-effects design (generalizability theory; Brennan 2001), and in a balanced design
it is the REML mixed model's variance when every component is positive (tests/compare/test_crossed.py).
An unseeded side (a base snapshot: one deterministic model) has no seed term, and its item
interactions are part of delta_i. One recipe's own score uses the same formulas with c_i in place
of delta_i.

The test and interval: generalized (fiducial) inference (Tsui & Weerahandi 1989, JASA 84:602;
Weerahandi 1993, JASA 88:899; Hannig 2009). Each mean square M with k degrees of freedom has the
fiducial distribution M k / chi2_k for its expectation; the fiducial variance
    V* = sum_sides s2_rows k / (S chi2_k) + max(0, Var_i(delta_i) (n-1) / (n chi2_(n-1))
                                                  - sum_sides MS_res d / (S n chi2_d))
(k = S - 1, d = (S - 1)(n - 1)), drawn `DRAWS` times with a fixed seed, carries the uncertainty
of the variance itself. The two-sided p-value is E[2 Phi(-|estimate| / sqrt(V*))], the interval
estimate +- h with E[2 Phi(-h / sqrt(V*))] = 1 - confidence. Why not Student's t with
Satterthwaite's degrees of freedom: with 2 or 3 seeds a seed term has 1 or 2 degrees of freedom,
and when its estimate comes out small the estimated variance is small *and* the estimated df is
large at once: against an unseeded base that test declared 8-14% of identical recipes different
at 2 seeds and 6-8% at 3 once seeds vary (alpha 5%), and up to 6% for two recipes of unequal spread. The
generalized test stayed at or below alpha in every case simulated (tests/compare/test_verdict_calibration.py,
benchmarks/verdict_calibration.md); its price is caution at 2 seeds. A side with one trained
model has no estimable seed spread: recipe-level inference needs at least 2 seeds per seeded side.

With a seed spread pooled over a family's recipes (`SeedPool`, a study's `analysis.seed_spread:
pooled`), every side's seed term draws from one fiducial distribution with the family's degrees of
freedom instead of its own S - 1; the seeds of two recipes are then taken as independent samples.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

from ftlab.errors import FtlabError

DRAWS = 20_000  # fiducial draws per test: the p-value's Monte Carlo sd is below 0.002 at p = 0.05
_GRID = 400  # possible studies a power computation integrates over (see Design.power)


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


def _inverse_chi2(rng: np.random.Generator, df: float, size) -> np.ndarray:
    """df / chi2_df draws: the fiducial factor of a mean square with df degrees of freedom."""
    return df / rng.chisquare(df, size)


@functools.lru_cache(maxsize=512)
def _fiducial_factors(role: int, side: int, df: int, draws: int) -> np.ndarray:
    """DRAWS fixed fiducial factors df / chi2_df for one term (role: 0 seed, 1 cell, 2 item; side:
    which recipe), seeded by the term, so a test's p-value is reproducible and costs no sampling."""
    out = _inverse_chi2(np.random.default_rng([role, side, df]), df, draws)
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class SeedPool:
    """One seed spread s2_seed for every seeded recipe of a family, estimated from all of them: the
    homogeneity that a one-way ANOVA's pooled error (and Tukey's and Dunnett's tests on it) assumes.
    Recipe r gives its s2_rows,r with k_r = S_r - 1 degrees of freedom, whose expectation is
    s2_seed + e_r, e_r = MS_res,r / n_r its models' item noise on its own n_r items (taken as known:
    it has (S_r - 1)(n_r - 1) degrees of freedom). Then sum_r k_r s2_rows,r / (s2_seed + e_r) is
    chi2 with K = sum k_r degrees of freedom, and
    - the estimate solves sum_r k_r s2_rows,r / (s2 + e_r) = K (0 when no s2 >= 0 does): the
      Paule-Mandel estimator of a between-study variance (Paule & Mandel 1982, J. Res. NBS 87:377);
    - its fiducial draws solve the same with a chi2_K draw on the right (the Q-profile; Viechtbauer
      2007, Statistics in Medicine 26:37), which is the generalized pivotal quantity of s2_seed.
    A recipe measured on few items (large e_r) weighs less, as it should. A comparison's seed term
    for side j is then (s2_seed* + MS_res,j / n) / S_j on its n common items: K degrees of freedom
    instead of S_j - 1, which is what lets a study of many recipes decide with few seeds each.
    Valid when the recipes' seed spreads are equal; docs/study.md says what a recipe with a wider
    spread does to the error rate (measured in benchmarks/adaptive_study.md)."""

    terms: tuple[tuple[int, float, float], ...]  # per recipe: (k_r, s2_rows,r, e_r)

    @property
    def df(self) -> int:
        return sum(k for k, _, _ in self.terms)

    def _solve(self, q: np.ndarray) -> np.ndarray:
        """s2 >= 0 with sum_r k_r s2_rows,r / (s2 + e_r) = q, per q (0 where even s2 = 0 gives less),
        by bisection: the left side falls as s2 grows."""
        k, rows, noise = (np.array(col, dtype=float)[:, None] for col in zip(*self.terms))
        weight = k * rows

        def left(s2: np.ndarray) -> np.ndarray:
            den = s2[None, :] + noise
            return np.where(den > 0, weight / np.where(den > 0, den, 1.0), np.where(weight > 0, np.inf, 0.0)).sum(axis=0)

        lo, hi = np.zeros_like(q), weight.sum() / q  # at hi: sum k rows / (hi + e) <= sum k rows / hi = q
        positive = left(lo) > q
        for _ in range(60):
            mid = (lo + hi) / 2
            above = left(mid) > q
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return np.where(positive, (lo + hi) / 2, 0.0)

    @functools.cached_property
    def spread(self) -> float:
        return float(self._solve(np.array([float(self.df)]))[0])

    @functools.cached_property
    def fiducial(self) -> np.ndarray:
        """DRAWS fiducial draws of s2_seed (fixed chi2_K draws, so a test is reproducible)."""
        q = np.random.default_rng([3, self.df]).chisquare(self.df, DRAWS)
        out = self._solve(q)
        out.flags.writeable = False
        return out


def _pool_term(y) -> tuple[int, float, float] | None:
    """One recipe's (k_r, s2_rows,r, e_r) for a `SeedPool`; None with fewer than 2 seeds or items."""
    y = np.asarray(y, dtype=float)
    s, n = y.shape
    if s < 2 or n < 2:
        return None
    side = seed_side(y, seeded=True)
    return s - 1, side.row_var, side.cell_var / n


def seed_pool(matrices) -> SeedPool | None:
    """The pooled seed spread of several recipes' S_r x n_r outcome matrices (those with 2+ seeds
    and 2+ items; items may differ between recipes); None without any."""
    terms = tuple(t for t in map(_pool_term, matrices) if t is not None)
    return SeedPool(terms) if terms else None


def wider_than_pool(matrices) -> list[float]:
    """Per recipe (an S_r x n_r matrix with 2+ seeds), the p-value of "its seeds vary no more than
    the other recipes' pooled spread": under the pool's assumption s2_rows,r / (s2_seed + e_r) is
    chi2_(k_r) / k_r, and s2_seed + e_r estimated from the other recipes (K_o degrees of freedom)
    makes the ratio F(k_r, K_o) (exactly so when the recipes' item noise e is alike). Leaving the
    recipe out keeps a wide recipe from hiding in a pool it widened. NaN without another recipe."""
    terms = [_pool_term(y) for y in matrices]
    out = []
    for r, term in enumerate(terms):
        others = tuple(t for j, t in enumerate(terms) if j != r and t is not None)
        if term is None or not others:
            out.append(math.nan)
            continue
        k, rows, noise = term
        pool = SeedPool(others)
        scale = pool.spread + noise
        out.append(float(_sps.f.sf(rows / scale, k, pool.df)) if scale > 0 else (0.0 if rows > 0 else 1.0))
    return out


@dataclass(frozen=True)
class Design:
    """What sets a comparison's precision: the seeded sides and the item part's raw term
    Var_i(delta_i) / n on `items` items. Built from a study's estimates (`CrossedResult.design`)
    or from a plan's assumptions (`VarianceModel.design`)."""

    sides: tuple[SeedSide, ...]  # seeded sides only
    item_raw: float
    items: int
    pool: SeedPool | None = None  # the seed spread pooled over the family's recipes (see SeedPool)

    def _row_var(self, side: SeedSide) -> float:
        """A side's s2_rows: its own, or the pooled seed spread plus its own item noise."""
        return side.row_var if self.pool is None else self.pool.spread + side.cell_var / self.items

    def seed_dfs(self) -> list[int]:
        """Degrees of freedom of each independent seed term (one pooled term with a pool)."""
        return [self.pool.df] if self.pool is not None else [side.seeds - 1 for side in self.sides]

    def parts(self) -> tuple[float, float]:
        """(seed part, item part) of V^ (see the module's formulas)."""
        seed = sum(self._row_var(side) / side.seeds for side in self.sides)
        cells = sum(side.cell_var / (side.seeds * self.items) for side in self.sides)
        return float(seed), max(0.0, float(self.item_raw - cells))

    def variance(self) -> float:
        return sum(self.parts())

    def _fiducial_terms(self) -> tuple[list[np.ndarray], np.ndarray]:
        """DRAWS draws of each side's seed term and of the item part of V* (the module's formula),
        from the fixed fiducial factors."""
        n = self.items
        cell_terms = [side.cell_var / (side.seeds * n) * _fiducial_factors(1, j, (side.seeds - 1) * (n - 1), DRAWS)
                      for j, side in enumerate(self.sides)]
        cells = sum(cell_terms, np.zeros(DRAWS))
        item = np.maximum(0.0, self.item_raw * _fiducial_factors(2, 0, n - 1, DRAWS) - cells)
        if self.pool is not None:
            return [self.pool.fiducial * sum(1 / side.seeds for side in self.sides) + cells], item
        seeds = [side.row_var / side.seeds * _fiducial_factors(0, j, side.seeds - 1, DRAWS)
                 for j, side in enumerate(self.sides)]
        return seeds, item

    def fiducial_sd(self) -> np.ndarray:
        """The positive draws of sqrt(V*), what the test and the interval average over."""
        seeds, item = self._fiducial_terms()
        sd = np.sqrt(sum(seeds, np.zeros(DRAWS)) + item)
        return sd[sd > 0]

    def power(self, difference: float, alpha: float) -> float:
        """Power of the generalized test when these values are the truth. What a study estimates
        varies: each seed term is its expectation times chi2_k / k (normal theory, independent of
        the estimate, which is normal around `difference`); the item and cell terms, with n - 1 and
        more degrees of freedom, are taken at their expectations. The seed terms' distribution is
        integrated on a grid of quantile midpoints (`_GRID` points in all), and at each point the
        test's critical |estimate| is the (1 - alpha) quantile of |Z| sqrt(V*) over the very
        fiducial draws the test uses."""
        return self._power_curve(alpha)(difference)

    def _power_curve(self, alpha: float):
        """power(difference) over the grid of what a study could estimate (see `power`)."""
        dfs = self.seed_dfs() if self.sides else []
        per_side = max(2, round(_GRID ** (1 / len(dfs)))) if dfs else 1
        grids = [_sps.chi2.ppf((np.arange(per_side) + 0.5) / per_side, df) / df for df in dfs]
        points = np.array(np.meshgrid(*grids, indexing="ij")).reshape(len(dfs), -1) if grids else np.ones((0, 1))
        seed_terms, item = self._fiducial_terms()
        z = np.abs(np.random.default_rng(0).standard_normal(DRAWS))
        half = np.empty(points.shape[1])
        for o in range(points.shape[1]):  # one possible study: its seed terms, then its critical value
            fiducial = item + sum(points[j, o] * term for j, term in enumerate(seed_terms))
            half[o] = np.quantile(z * np.sqrt(fiducial), 1 - alpha)
        sd = math.sqrt(self.variance())

        def power(difference: float) -> float:
            d = abs(difference)
            return float(np.mean(_sps.norm.sf((half - d) / sd) + _sps.norm.cdf((-half - d) / sd)))

        return power

    def mdd(self, alpha: float, power: float) -> float:
        """The smallest true difference this design detects with `power`, by bisection on the
        power curve. NaN when the design has no variance (nothing varied)."""
        var = self.variance()
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
    se: float  # sqrt(V^)
    p_value: float  # two-sided generalized p-value; NaN when there is no variation to test against
    confidence: float
    seed_part: float  # the seed terms of V^ (sum of s2_rows / S)
    item_part: float  # the item sampling of what the seeds share
    design: Design  # the estimates behind it, for the interval and the minimum detectable difference

    @property
    def n_items(self) -> int:
        return self.design.items

    @functools.cached_property
    def half_width(self) -> float:
        """h with E[2 Phi(-h / sqrt(V*))] = 1 - confidence (bisection; the left side falls with h)."""
        if self.se == 0:
            return 0.0
        sd = self.design.fiducial_sd()
        lo, hi = 0.0, float(sd.max()) * 10
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _two_sided(mid, sd) > 1 - self.confidence else (lo, mid)
        return hi

    @property
    def ci_low(self) -> float:
        return self.estimate - self.half_width

    @property
    def ci_high(self) -> float:
        return self.estimate + self.half_width

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


def _two_sided(x: float, sd: np.ndarray) -> float:
    return float(np.mean(2 * _sps.norm.sf(abs(x) / sd)))


def _result(estimate: float, sides: list[SeedSide], item_values: np.ndarray, confidence: float,
            pool: SeedPool | None = None) -> CrossedResult:
    if not 0 < confidence < 1:
        raise FtlabError(f"confidence={confidence} must be between 0 and 1 (e.g. 0.95)")
    n = item_values.size
    seeded = tuple(side for side in sides if side.seeds > 1)
    design = Design(seeded, float(item_values.var(ddof=1) / n), n, pool if seeded else None)
    seed_part, item_part = design.parts()
    if seed_part + item_part <= 0:  # every model scored every item alike: nothing to test a difference against
        return CrossedResult(estimate, 0.0, 1.0 if estimate == 0 else math.nan, confidence, 0.0, 0.0, design)
    sd = design.fiducial_sd()
    p = _two_sided(estimate, sd) if sd.size else math.nan
    return CrossedResult(float(estimate), math.sqrt(seed_part + item_part), min(1.0, p), confidence, seed_part,
                         item_part, design)


def crossed_mean(y, *, seeded: bool = True, confidence: float = 0.95, pool: SeedPool | None = None) -> CrossedResult:
    """The mean of an S x n matrix (S trained models of one recipe on the same n items) with both
    variance sources; `seeded=False` for one deterministic model (items only). Also the paired
    difference of two matrices whose rows are the same trained models (a quantized model minus its
    own source): pass their difference. `pool`: the seed spread is the family's pooled one."""
    y = _matrix(y, "the outcome matrix")
    side = seed_side(y, seeded=seeded)
    return _result(float(y.mean()), [side], y.mean(axis=0), confidence, pool)


def crossed_difference(ya, yb, *, seeded_a: bool = True, seeded_b: bool = True,
                       confidence: float = 0.95, pool: SeedPool | None = None) -> CrossedResult:
    """mean(B) - mean(A) for two recipes whose trained models are independent draws, on the same
    n items (columns aligned): seed spread of each side plus item sampling of the paired
    per-item difference. `pool`: the seeded sides' spread is the family's pooled one (`SeedPool`)."""
    a = _matrix(ya, "recipe A's outcome matrix")
    b = _matrix(yb, "recipe B's outcome matrix")
    if a.shape[1] != b.shape[1]:
        raise FtlabError(f"the two recipes must answer the same items, got {a.shape[1]} and {b.shape[1]}")
    sides = [seed_side(a, seeded=seeded_a), seed_side(b, seeded=seeded_b)]
    delta = b.mean(axis=0) - a.mean(axis=0)
    return _result(float(delta.mean()), sides, delta, confidence, pool)


def crossed_ratio(source, quantized, *, seeded: bool = True, confidence: float = 0.95) -> tuple[float, float, float]:
    """Ratio mean(Q) / mean(S) of paired matrices (row k of both is the same trained model) with a
    delta-method interval: the linearised variable L = Q - R * S has mean 0 at the estimate and
    Var(R^) ~ Var(mean L) / mean(S)^2, taken with the crossed inference on L. NaN when mean(S) is 0."""
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

    def design(self, seeds: int, items: int, *, paired: bool = True, pooled: int | None = None) -> Design:
        """Two recipes with `seeds` each on `items`: the estimator's summaries at their expectations.
        Paired (seed k with seed k, seeds independent): one side, the per-seed differences, whose
        spread and residual are both recipes' summed; unpaired: two sides. `pooled`: the seed
        spread is pooled over this many recipes with `seeds` each (`SeedPool`; the sides unpaired)."""
        if seeds < 2 or items < 2:
            raise FtlabError("a recipe comparison needs at least 2 seeds and 2 items per recipe")
        item_raw = (self.item_var + 2 * self.cell_var / seeds) / items
        side = SeedSide(seeds, self.seed_var + self.cell_var / items, self.cell_var)
        if pooled:
            pool = SeedPool(((seeds - 1, side.row_var, self.cell_var / items),) * pooled)
            return Design((side, side), item_raw, items, pool)
        if paired:
            return Design((SeedSide(seeds, 2 * side.row_var, 2 * side.cell_var),), item_raw, items)
        return Design((side, side), item_raw, items)

    def power(self, difference: float, seeds: int, items: int, alpha: float, *, paired: bool = True,
              pooled: int | None = None) -> float:
        return self.design(seeds, items, paired=paired, pooled=pooled).power(difference, alpha)


def items_for_power(model: VarianceModel, difference: float, seeds: int, *, alpha: float, power: float,
                    max_items: int, paired: bool = True, pooled: int | None = None) -> int | None:
    """Fewest items (2 .. max_items) that give `power` with `seeds` per recipe; None when even
    max_items does not (the seed spread alone caps the power). `pooled`: see `VarianceModel.design`."""
    def enough(n: int) -> bool:
        return model.power(difference, seeds, n, alpha, paired=paired, pooled=pooled) >= power

    if not enough(max_items):
        return None
    lo, hi = 2, max_items
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo
