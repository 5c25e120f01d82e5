"""The decisions of an adaptive study at each look: which comparisons are decided, at what alpha,
and what the next round should add. Pure functions over outcome matrices (no files, no jobs):
`ftlab.study.adaptive` feeds them a study's results, `ftlab.study.adaptive_sim` simulated ones.

The family. Per task, among the unquantized configurations (trained recipes and the base
snapshot): every configuration against the best-ranked one (kind `best`; ranked by item-adjusted
means, `adjusted_means`) and every recipe against the baseline (kind `baseline`); B - A with the recipe-level test of the verdict
(`ftlab.study.analysis.recipe_test`: seeds and items crossed, generalized inference). With
`analysis.seed_spread: pooled` (`Limits.seed_spread`) the seed spread is one for the task's
recipes, estimated from all of them at each look (`ftlab.compare.crossed.SeedPool`), and the
information time and the next round's half-widths count the pool's degrees of freedom.

A look, after round k, with its share alpha_k of the error rate:
- decided different: Holm's procedure at alpha_k over every pairwise comparison of each task's
  configurations rejects "no difference" (all pairs, because the best is chosen from the data:
  Holm over the comparisons with it alone does not hold alpha; see `look`);
- decided equivalent: the two one-sided tests (TOST, Schuirmann 1987) reject both |B - A| >= d
  (d = `min_difference`) at alpha_k / m each (m pairwise comparisons, Bonferroni): the
  difference's interval at confidence 1 - 2 alpha_k / m lies inside +-d;
- futile, with `Limits.futility` > 0 (the study file's `adaptive.futility`): an open comparison
  whose predictive power (`predictive_power`) of being decided at the ceiling is below it. It gets
  no more seeds or items for its own sake, but is still tested at every look;
- open otherwise. A decision is never revisited; the configurations in an open comparison get the
  next round's seeds or items. When nothing is open but futile comparisons, the study stops and
  that look spends the alpha left.

Why the error rate holds across rounds. Looking after every round and stopping what is decided is
a sequential design, so each look may only spend part of alpha: alpha_k = alpha f(t_k) - alpha
f(t_(k-1)), with a Lan-DeMets spending function (Lan & DeMets 1983, Biometrika 70:659;
`ftlab.study.spending`): by default of the Hwang-Shih-DeCani family with gamma -8, f(t) = (1 -
e^(8 t)) / (1 - e^8) (Hwang, Shih & DeCani 1990, Statistics in Medicine 9:1439), which keeps most of
alpha for the last look; or of O'Brien-Fleming type, f(t) = 2 - 2 Phi(z_(1 - alpha/2) / sqrt(t))
(O'Brien & Fleming 1979, Biometrics 35:549); or of Pocock type, f(t) = ln(1 + (e - 1) t). Why the
default: every comparison still open at the last look sees the same data as the fixed design that
spends everything, so the adaptive verdict parts from the fixed one mainly by the alpha the earlier
looks took (benchmarks/adaptive_study.md). t_k is the information
time: the variance of a recipe comparison at the most the study may spend (`max_seeds` x
`max_items`) over its variance at the current round's design, both from the variance components
measured at the look (information-based monitoring; Jennison & Turnbull 2000, "Group Sequential
Methods", ch. 7); it never decreases, and the last look spends what is left (t = 1). The looks are
combined by the union bound, not by the joint normal law of the statistics across looks that exact
group-sequential boundaries solve for: with seeds and items added where the data say, the
successive statistics are not the canonical Brownian motion those boundaries assume, while
P(any false claim) <= sum_k alpha_k = alpha needs only each look's test to hold its level. The
price is power: with three equally spaced looks under O'Brien-Fleming spending the last look tests
at the alpha left, 0.034, where exact boundaries would test at 0.044 (z 2.12 against 2.02; the
exact boundary solved by Monte Carlo over 2 million draws of the three correlated statistics). Choosing the next round from the
data could still move a look's level (Proschan, Follmann & Waclawiw 1992, Biometrics 48:1131);
tests/study/test_adaptive_calibration.py and benchmarks/adaptive_study.md measure the family-wise
rate of false differences over whole simulated adaptive studies instead of assuming it.

The next round: either more items for every configuration in an open comparison (the current
count times `item_growth`, or `max_items` when the round after would add less than that: see
`next_items`) or one more seed per open recipe (at most
`max_seeds`), whichever cuts the comparison's squared 99% half-width most per second of compute:
the half-width from the generalized test's fiducial distribution at the measured variance
components (`VarianceModel`; it counts the few degrees of freedom of a few seeds, which the
variance alone would not), seconds from measured job times (`Costs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
import numpy as np
from scipy import stats as _sps

from ftlab.compare.crossed import DRAWS, VarianceModel, seed_pool, seed_side
from ftlab.compare.stats import holm
from ftlab.errors import FtlabError
from ftlab.study.analysis import Config, recipe_test
from ftlab.study.levels import PER_RECIPE, POOLED
from ftlab.study.spending import DEFAULT as DEFAULT_SPENDING
from ftlab.study.spending import spending as spending_function

DIFFERENT, EQUIVALENT, OPEN, FUTILE = "different", "equivalent", "open", "futile"
BEST, BASELINE = "best", "baseline"  # the two kinds of comparison in the family
ITEMS, SEEDS = "items", "seeds"  # what a round can add
# Why an adaptive study stopped.
STOP_DECIDED, STOP_CEILING, STOP_BUDGET, STOP_FUTILE = "decided", "ceiling", "budget", "futility"


# ---------------------------------------------------------------------------------------------
# The variance model and information time


def common_items(configs: list[Config]) -> np.ndarray:
    """The items every one of the configurations answered."""
    items = configs[0].items
    for c in configs[1:]:
        items = np.intersect1d(items, c.items)
    return items


def components(configs: list[Config]) -> VarianceModel | None:
    """The variance components of a recipe comparison measured on trained configurations with 2+
    seeds (the same items): the mean seed component and model x item residual over them, and the
    recipe x item variance over their pairs (truncated at 0; 2 p (1 - p) with one recipe, which
    counts every disagreement as recipe x item: conservative). None without such a configuration."""
    configs = [c for c in configs if c.seeded and len(c.models) >= 2]
    if not configs:
        return None
    items = common_items(configs)
    if items.size < 2:
        return None
    configs = [c.on(items) for c in configs]
    sides = [seed_side(c.score, seeded=True) for c in configs]
    seed_var = float(np.mean([s.spread(items.size) for s in sides]))
    cell_var = float(np.mean([s.cell_var for s in sides]))
    pairs = [max(0.0, float(np.var(b.score.mean(axis=0) - a.score.mean(axis=0), ddof=1)
                            - sa.cell_var / sa.seeds - sb.cell_var / sb.seeds))
             for i, (a, sa) in enumerate(zip(configs, sides)) for b, sb in zip(configs[i + 1:], sides[i + 1:])]
    if pairs:
        item_var = float(np.mean(pairs))
    else:
        score = float(configs[0].score.mean())
        item_var = 2 * score * (1 - score)
    return VarianceModel(seed_var=seed_var, item_var=item_var, cell_var=cell_var)


def variance(models: list[VarianceModel], seeds: int, items: int, pair_seeds: bool, pooled: int | None = None) -> float:
    """The summed variance of one recipe comparison per task at this design (`pooled`: the seed
    spread pooled over that many recipes)."""
    return float(sum(m.design(seeds, items, paired=pair_seeds, pooled=pooled).variance() for m in models))


_Z = np.abs(np.random.default_rng(0).standard_normal(DRAWS))  # one |Z| per fiducial draw
PRECISION_LEVEL = 0.99


def half_width(models: list[VarianceModel], seeds: int, items: int, pair_seeds: bool, pooled: int | None = None) -> float:
    """The summed 99% half-width of one recipe comparison per task at this design, from the
    generalized test's own fiducial distribution: unlike the variance, it counts how few degrees of
    freedom a few seeds give (2 seeds: a Cauchy-like tail), which is what keeps a comparison open."""
    out = 0.0
    for m in models:
        sd = m.design(seeds, items, paired=pair_seeds, pooled=pooled).fiducial_sd()
        out += float(np.quantile(_Z[: sd.size] * sd, PRECISION_LEVEL)) if sd.size else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# One look


@dataclass(frozen=True)
class Row:
    """One comparison of the family at a look: B (`recipe`) - A (`other`)."""

    task: str
    kind: str  # BEST or BASELINE
    recipe: str
    other: str
    estimate: float
    p_value: float  # two-sided generalized p-value of "no difference"
    p_equivalence: float  # TOST: the larger one-sided p-value of |difference| >= d
    seeds: int  # of the recipe side (1 unseeded)
    other_seeds: int
    items: int
    state: str  # DIFFERENT, EQUIVALENT, OPEN or FUTILE
    decided_round: int | None  # the round whose look decided it (or found it futile)
    se: float | None = None  # of the estimate (what the predictive power scales from)
    predictive_power: float | None = None  # when found futile: its chance of a decision at the ceiling

    @property
    def key(self) -> tuple[str, str, str]:
        return self.task, self.kind, self.recipe

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def equivalence_p(res, margin: float) -> float:
    """TOST p-value of |difference| >= margin from the generalized inference: the larger of the
    fiducial probabilities that the difference lies below -margin or above +margin."""
    if res.se == 0:  # every model scored every item alike: no item or seed spread to bound it by, so no claim
        return 1.0
    sd = res.design.fiducial_sd()
    if not sd.size:
        return math.nan
    below = float(np.mean(_sps.norm.cdf((-margin - res.estimate) / sd)))
    above = float(np.mean(_sps.norm.cdf((res.estimate - margin) / sd)))
    return max(below, above)


def adjusted_means(configs: dict[str, Config]) -> dict[str, float]:
    """Each configuration's mean score adjusted for the items it answered: its effect in the
    additive model score = configuration + item, fitted by least squares to every configuration's
    per-item means (over its models) on the items each answered; centred on the mean over
    configurations. With the same items for all it is the plain mean minus a constant. An adaptive
    study stops giving items to decided configurations, and items differ in difficulty far more than
    configurations differ (item sd 1.5 on the logit scale in benchmarks/adaptive_study.py), so plain
    means over different item sets would rank a configuration that stopped at the easy first items
    above one that went on to harder ones. Solved by the reduced normal equations of the
    configurations (the item effects eliminated): A mu = r with A = diag(n) - N diag(1/k) N', r =
    the row sums of Y minus N times the item means, N the configuration x item incidence, n its row
    and k its column sums."""
    names = list(configs)
    items = np.unique(np.concatenate([configs[a].items for a in names]))
    incidence = np.zeros((len(names), items.size))
    y = np.zeros((len(names), items.size))
    for row, a in enumerate(names):
        cols = np.searchsorted(items, configs[a].items)
        incidence[row, cols] = 1.0
        y[row, cols] = configs[a].score.mean(axis=0)
    k = incidence.sum(axis=0)
    system = np.diag(incidence.sum(axis=1)) - (incidence / k) @ incidence.T
    rhs = y.sum(axis=1) - incidence @ (y.sum(axis=0) / k)
    mu = np.linalg.lstsq(system, rhs, rcond=None)[0]  # singular by a constant: the minimum-norm solution
    mu -= mu.mean()
    return {a: float(m) for a, m in zip(names, mu)}


def family(arms: dict[str, dict[str, Config]], baseline: str) -> list[tuple[str, str, str, str]]:
    """(task, kind, recipe, other) of every comparison: per task, each configuration against the
    best-ranked (highest item-adjusted mean score, `adjusted_means`; ties by name) and each recipe
    against the baseline (the baseline against the best only once, as the best against the
    baseline)."""
    out = []
    for task, configs in arms.items():
        means = adjusted_means(configs)
        best = min(configs, key=lambda name: (-round(means[name], 12), name))
        with_baseline = baseline in configs
        # The baseline against the best is the best against the baseline: tested once, as the latter.
        out += [(task, BEST, name, best) for name in configs if name != best and not (with_baseline and name == baseline)]
        out += [(task, BASELINE, name, baseline) for name in configs if name != baseline and with_baseline]
    return out


def _pairs(arms: dict[str, dict[str, Config]], pair_seeds: bool, margin: float,
           cache: dict | None = None, pooled: bool = False) -> dict[tuple, tuple]:
    """(task, x, y), x < y by name -> (estimate of y - x, p, TOST p, seeds of y, seeds of x, items) for
    every pair of the task's configurations, on the items both answered. `cache`: results by pair
    and matrix shapes, for callers whose configurations only ever grow by taking more rows and
    columns of the same data (a simulated study), so a pair whose two sides did not grow is not
    tested again."""
    out = {}
    for task, configs in arms.items():
        names = sorted(configs)
        pool = seed_pool([c.score for c in configs.values() if c.seeded]) if pooled else None
        for i, x in enumerate(names):
            for y in names[i + 1:]:
                a, b = configs[x], configs[y]
                key = (task, x, y, a.score.shape, b.score.shape, pool)
                if cache is not None and key in cache:
                    out[(task, x, y)] = cache[key]
                    continue
                items = np.intersect1d(a.items, b.items)
                a, b = a.on(items), b.on(items)
                _, res = recipe_test(a, b, pair_seeds=pair_seeds, confidence=0.95, pool=pool)
                out[(task, x, y)] = (res.estimate, res.p_value, equivalence_p(res, margin),
                                     len(b.models) if b.seeded else 1, len(a.models) if a.seeded else 1, int(items.size),
                                     float(res.se))
                if cache is not None:
                    cache[key] = out[(task, x, y)]
    return out


def look(arms: dict[str, dict[str, Config]], *, baseline: str, alpha: float, margin: float, pair_seeds: bool,
         round_no: int, earlier: dict[tuple, Row] | None = None, cache: dict | None = None,
         pooled: bool = False) -> list[Row]:
    """The family's rows after this look: decisions of earlier looks carried, the open comparisons
    decided at this look's alpha. Holm's procedure and the equivalence tests' Bonferroni run over
    every pair of configurations in every task, of which the reported comparisons are a part: the
    best is chosen from the data, and Holm over the comparisons with it alone does not hold alpha
    (in simulated null studies of 10 recipes it declared a false difference in 6.5% of them at alpha
    0.05, benchmarks/adaptive_study.md). A comparison found futile at an earlier look is tested again
    (it may be decided on data its configurations got for other comparisons) and stays futile if not."""
    earlier = earlier or {}
    pairs = _pairs(arms, pair_seeds, margin, cache, pooled)
    keys = list(pairs)
    adjusted = dict(zip(keys, holm(np.array([pairs[k][1] for k in keys])))) if keys else {}
    m = len(keys)
    out = []
    for task, kind, recipe, other in family(arms, baseline):
        done = earlier.get((task, kind, recipe))
        if done is not None and done.state in (DIFFERENT, EQUIVALENT):
            out.append(done)
            continue
        x, y = sorted((recipe, other))
        estimate, p, p_eq, seeds_y, seeds_x, items, se = pairs[(task, x, y)]
        flip = recipe == x  # the pair holds y - x; the row is recipe - other
        row = Row(task, kind, recipe, other, -estimate if flip else estimate, p, p_eq,
                  seeds_x if flip else seeds_y, seeds_y if flip else seeds_x, items, OPEN, None, se)
        if alpha <= 0:  # a look with nothing to spend decides nothing (a p-value may underflow to 0)
            pass
        elif adjusted[(task, x, y)] <= alpha:
            row = replace(row, state=DIFFERENT, decided_round=round_no)
        elif p_eq <= alpha / m:
            row = replace(row, state=EQUIVALENT, decided_round=round_no)
        if row.state == OPEN and done is not None and done.state == FUTILE:
            row = replace(row, state=FUTILE, decided_round=done.decided_round, predictive_power=done.predictive_power)
        out.append(row)
    return out


def open_arms(rows: list[Row]) -> set[str]:
    """The configurations in at least one open comparison."""
    return {name for r in rows if r.state == OPEN for name in (r.recipe, r.other)}


def predictive_power(row: Row, model: VarianceModel, *, limits: Limits, pairs: int, pooled: int | None) -> float:
    """The predictive power of an open comparison: the chance that it is decided, different or
    equivalent, once both its sides are at the ceiling, averaged over what the true difference may
    be given the data so far (flat prior; Spiegelhalter, Freedman & Blackburn 1986, Controlled
    Clinical Trials 7:8; Jennison & Turnbull 2000, "Group Sequential Methods", ch. 10.3). The
    estimate at the ceiling is then normal around the current one with variance se^2 - se_c^2, where
    se_c^2 = w se^2 and w is the ceiling's variance over the variance at the row's design (the
    variance model; scaled to the row's measured se). Not the conditional power at the current
    estimate, which trusts a first round's noisy estimate: it stopped differences of 0.15 in score
    after 2 seeds x 100 items when the base model happened to score low on those items (power 0.98
    against 1.00 in 20 simulated `clear` studies). Generous on purpose, so that a comparison stops
    only when even an optimistic reading gives it little chance: "different" at the whole alpha
    (Holm's last step) with a normal critical value (the generalized test's few seed degrees of
    freedom need more), "equivalent" at the Bonferroni level the looks use. 1 when it cannot be
    judged (no measured spread, or the row already at the ceiling)."""
    seeds = min(s for s in (row.seeds, row.other_seeds, limits.max_seeds) if s > 1)
    now = model.design(seeds, row.items, paired=limits.pair_seeds, pooled=pooled).variance()
    ceiling = model.design(limits.max_seeds, limits.max_items, paired=limits.pair_seeds, pooled=pooled).variance()
    if not row.se or not now > 0 or ceiling >= now:
        return 1.0
    w = ceiling / now
    se_c = row.se * math.sqrt(w)  # the estimate's se at the ceiling
    sd = row.se * math.sqrt(1 - w)  # the spread of the ceiling's estimate around the current one
    z = _sps.norm.isf(limits.alpha / 2) * se_c
    different = _sps.norm.cdf((row.estimate - z) / sd) + _sps.norm.cdf((-row.estimate - z) / sd)
    bound = limits.margin - _sps.norm.isf(limits.alpha / pairs) * se_c  # |estimate| below it: equivalent
    equivalent = (_sps.norm.cdf((bound - row.estimate) / sd) - _sps.norm.cdf((-bound - row.estimate) / sd)
                  if bound > 0 else 0.0)
    return float(min(1.0, different + max(0.0, equivalent)))


def futile(rows: list[Row], models: dict[str, VarianceModel], *, limits: Limits, pairs: int, pooled: int | None,
           round_no: int) -> list[Row]:
    """The rows with every open comparison whose predictive power is below `limits.futility` marked
    futile: it no longer keeps its configurations open. Non-binding: it is still tested at every
    look at that look's alpha, so the bound P(any false claim) <= sum_k alpha_k = alpha holds as
    before; stopping only takes away chances to reject. `pairs`: the pairs the look's tests run over."""
    out = []
    for r in rows:
        if r.state == OPEN and r.task in models:
            power = predictive_power(r, models[r.task], limits=limits, pairs=pairs, pooled=pooled)
            if power < limits.futility:
                r = replace(r, state=FUTILE, decided_round=round_no, predictive_power=power)
        out.append(r)
    return out



# ---------------------------------------------------------------------------------------------
# The next round


@dataclass(frozen=True)
class Costs:
    """Seconds per unit of work: a training (with its PTQ variants), an evaluated item of one model
    on one task. `variants`: PTQ variants per trained model (each evaluated too); `base_variants`:
    those of the base snapshot."""

    train_s: float
    quantize_s: float
    eval_item_s: float
    tasks: int
    variants: int = 0
    base_variants: int = 0

    def arm(self, seeded: bool, before: tuple[int, int], after: tuple[int, int]) -> float:
        """Seconds to bring one configuration from (seeds, items) `before` to `after`."""
        (s0, n0), (s1, n1) = before, after
        if not seeded:
            return (1 + self.base_variants) * self.tasks * self.eval_item_s * max(0, n1 - n0)
        new = max(0, s1 - s0)
        evals = (1 + self.variants) * self.tasks * self.eval_item_s * (s0 * max(0, n1 - n0) + new * n1)
        return new * (self.train_s + self.variants * self.quantize_s) + evals

    def design(self, designs: dict[str, tuple[int, int]], seeded: dict[str, bool]) -> float:
        """Seconds of a whole design (every configuration from nothing)."""
        return sum(self.arm(seeded[a], (0, 0), d) for a, d in designs.items())


@dataclass(frozen=True)
class Limits:
    """The adaptive settings a decision needs (the study file's `adaptive:` section)."""

    alpha: float
    margin: float  # min_difference
    max_seeds: int
    max_items: int
    item_growth: float = 2.0
    spending: str = DEFAULT_SPENDING
    pair_seeds: bool = True
    budget_s: float | None = None
    seed_spread: str = PER_RECIPE  # or POOLED
    futility: float = 0.0  # an open comparison with a smaller predictive power stops (0: never)

    @property
    def pooled(self) -> bool:
        return self.seed_spread == POOLED


@dataclass
class Decision:
    """What one look decided and what the next round adds."""

    round: int
    frontier: tuple[int, int]  # (seeds, items) the open configurations had at this look
    information: float  # t
    alpha: float  # spent at this look
    spent: float  # spent through this look
    rows: list[Row]
    open: list[str]  # configurations in an open comparison
    action: str | None  # ITEMS, SEEDS, or None when the study stops
    next_frontier: tuple[int, int] | None
    stop: str | None  # STOP_DECIDED, STOP_CEILING, STOP_BUDGET
    why: str
    options: dict[str, dict] = field(default_factory=dict)  # action -> {next, width_cut, seconds}

    def to_dict(self) -> dict:
        return {"round": self.round, "frontier": list(self.frontier), "information": self.information,
                "alpha": self.alpha, "spent": self.spent, "rows": [r.to_dict() for r in self.rows],
                "open": self.open, "action": self.action,
                "next_frontier": list(self.next_frontier) if self.next_frontier else None,
                "stop": self.stop, "why": self.why, "options": self.options}

    @classmethod
    def from_dict(cls, doc: dict) -> Decision:
        rows = [Row(**r) for r in doc["rows"]]
        return cls(doc["round"], tuple(doc["frontier"]), doc["information"], doc["alpha"], doc["spent"], rows,
                   list(doc["open"]), doc["action"], tuple(doc["next_frontier"]) if doc["next_frontier"] else None,
                   doc["stop"], doc["why"], dict(doc.get("options") or {}))


def _minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def decide(arms: dict[str, dict[str, Config]], *, baseline: str, limits: Limits, round_no: int,
           frontier: tuple[int, int], designs: dict[str, tuple[int, int]], earlier: Decision | None,
           costs: Costs | None, cache: dict | None = None) -> Decision:
    """The look after round `round_no` and the next round. `arms`: task -> configuration name ->
    its models x items (unquantized); `designs`: configuration -> (seeds, items) it has now (1 seed
    when unseeded); `frontier`: the (seeds, items) of the round just run; `cache`: see `_pairs`."""
    seeded = {name: c.seeded for configs in arms.values() for name, c in configs.items()}
    by_task = {task: m for task, m in ((task, components(list(c.values()))) for task, c in arms.items()) if m is not None}
    models = list(by_task.values())
    if not models:
        raise FtlabError("an adaptive study needs trained recipes with 2+ seeds evaluated at each look")
    ceiling = (limits.max_seeds, limits.max_items)
    at_ceiling = frontier[0] >= ceiling[0] and frontier[1] >= ceiling[1]
    t_before, spent_before = (earlier.information, earlier.spent) if earlier else (0.0, 0.0)
    # With a pooled seed spread, a recipe comparison's seed term has as many degrees of freedom as
    # the family's seeded recipes give together.
    pooled = max(1, sum(c.seeded for c in next(iter(arms.values())).values())) if limits.pooled else None
    now = variance(models, *frontier, limits.pair_seeds, pooled)
    t = 1.0 if at_ceiling or now <= 0 else max(t_before, min(1.0, variance(models, *ceiling, limits.pair_seeds, pooled) / now))
    width = half_width(models, *frontier, limits.pair_seeds, pooled)
    alpha = max(0.0, spending_function(limits.spending).spent(t, limits.alpha) - spent_before)
    carried = {r.key: r for r in earlier.rows} if earlier else {}

    def run(a: float) -> list[Row]:
        return look(arms, baseline=baseline, alpha=a, margin=limits.margin, pair_seeds=limits.pair_seeds,
                    round_no=round_no, earlier=carried, cache=cache, pooled=limits.pooled)

    rows = run(alpha)
    if limits.futility > 0 and not at_ceiling:
        pairs = sum(len(c) * (len(c) - 1) // 2 for c in arms.values())  # what `look` corrects over
        rows = futile(rows, by_task, limits=limits, pairs=pairs, pooled=pooled, round_no=round_no)
        carried = {**carried, **{r.key: r for r in rows if r.state == FUTILE}}  # the last look keeps them futile
    active = sorted(open_arms(rows))
    base = Decision(round_no, frontier, t, alpha, spent_before + alpha, rows, active, None, None, None, "")
    if not active and any(r.state == FUTILE for r in rows):
        # Nothing left to spend on: the last look spends what alpha is left on the same data.
        final = run(limits.alpha - spent_before)
        return replace(base, information=1.0, alpha=limits.alpha - spent_before, spent=limits.alpha, rows=final,
                       open=[], stop=STOP_FUTILE, why=_futile_why(final, limits))
    if not active:
        return replace(base, stop=STOP_DECIDED, why="every comparison is decided")

    steps = {}
    if frontier[1] < ceiling[1]:
        steps[ITEMS] = (frontier[0], next_items(frontier[1], limits.item_growth, ceiling[1]))
    if frontier[0] < ceiling[0]:
        steps[SEEDS] = (frontier[0] + 1, frontier[1])
    used = costs.design(designs, seeded) if costs else 0.0
    options, why_not = {}, []
    for action, nxt in steps.items():
        cut = 1 - (half_width(models, *nxt, limits.pair_seeds, pooled) / width) ** 2 if width > 0 else 0.0
        seconds = (sum(costs.arm(seeded[a], designs[a], _target(designs[a], nxt, seeded[a])) for a in active)
                   if costs else 1.0)
        options[action] = {"next": list(nxt), "width_cut": cut, "seconds": seconds}
        if limits.budget_s is not None and costs and used + seconds > limits.budget_s:
            why_not.append(f"{action} would take {_minutes(seconds)} with {_minutes(max(0.0, limits.budget_s - used))} "
                           f"of the budget left")
            options[action]["over_budget"] = True
    feasible = {a: o for a, o in options.items() if not o.get("over_budget")}
    if not feasible:
        # The last look: it spends whatever alpha is left on the same data.
        rows = run(limits.alpha - spent_before)
        stop = STOP_BUDGET if why_not else STOP_CEILING
        why = ("; ".join(why_not) if why_not else
               f"the ceiling ({ceiling[0]} seeds x {ceiling[1]} items) is reached")
        final = replace(base, information=1.0, alpha=limits.alpha - spent_before, spent=limits.alpha, rows=rows,
                        open=sorted(open_arms(rows)), options=options)
        if not final.open and any(r.state == FUTILE for r in rows):
            return replace(final, stop=STOP_FUTILE, why=_futile_why(rows, limits) + " (at the last look)")
        if not final.open:
            return replace(final, stop=STOP_DECIDED, why="every comparison is decided (at the last look)")
        return replace(final, stop=stop, why=why)
    action = max(feasible, key=lambda a: (feasible[a]["width_cut"] / max(feasible[a]["seconds"], 1e-9), a))
    chosen = feasible[action]
    why = (f"{action} {'x'.join(map(str, frontier))} -> {'x'.join(map(str, chosen['next']))} (seeds x items) for "
           f"{len(active)} configuration(s) in open comparisons: squared 99% half-width -{chosen['width_cut']:.0%} "
           f"for {_minutes(chosen['seconds'])}")
    others = [f"{a}: -{o['width_cut']:.0%} for {_minutes(o['seconds'])}" for a, o in options.items() if a != action]
    if others:
        why += f" (against {'; '.join(others)})"
    return replace(base, action=action, next_frontier=tuple(chosen["next"]), why=why, options=options)


def _futile_why(rows: list[Row], limits: Limits) -> str:
    n = sum(r.state == FUTILE for r in rows)
    return (f"no comparison is open: {n} comparison(s) found futile (predictive power of a decision at the ceiling, "
            f"{limits.max_seeds} seeds x {limits.max_items} items, below {limits.futility:g}), the rest decided")


def next_items(items: int, growth: float, ceiling: int) -> int:
    """The items of the next item round: `items` times `growth`, or the ceiling when the round after
    would add less than a full growth step (100 -> 200 -> 400 -> 1000, not 400 -> 800 -> 1000). A
    look whose information barely grew spends alpha that the last look then lacks: with 800 then
    1000 items, O'Brien-Fleming spending left the last look 0.003-0.007 of 0.05 in simulated
    studies (benchmarks/adaptive_study.md)."""
    grown = max(items + 1, math.ceil(items * growth))
    return ceiling if grown * growth > ceiling else grown


def _target(design: tuple[int, int], frontier: tuple[int, int], seeded: bool) -> tuple[int, int]:
    """Where an open configuration goes in the next round: up to the frontier (seeds only if seeded)."""
    return (max(design[0], frontier[0]) if seeded else design[0], max(design[1], frontier[1]))


def next_designs(designs: dict[str, tuple[int, int]], decision: Decision, seeded: dict[str, bool]) -> dict:
    """Every configuration's (seeds, items) in the next round: the open ones brought up to the new frontier."""
    if decision.next_frontier is None:
        return dict(designs)
    return {a: (_target(d, decision.next_frontier, seeded[a]) if a in decision.open else d)
            for a, d in designs.items()}
