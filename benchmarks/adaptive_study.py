"""Adaptive against fixed studies, over simulated studies shaped like examples/gpu-study.yaml: 10
recipes, up to 5 seeds and 1000 items per task, 3 tasks, 2 PTQ variants per trained model.

Each simulated study (ftlab.compare.simulate.StudyModel: item difficulty, recipe x item
interaction, per-trained-model seed effects) is drawn at the ceiling; the adaptive design starts at
2 seeds x 100 items and decides round by round with the code a real study runs
(ftlab.study.sequential), the fixed design trains 5 seeds of every recipe and evaluates 1000 items
(ftlab.study.adaptive_sim). Compute comes from job times measured on this machine
(benchmarks/demo.md: a LoRA training of SmolLM2-135M, 105 s; GPTQ of it, 76 s; evaluation, 0.15 s
per question and model).

Scenarios: `null` (every recipe the same: each declared difference is a false one, so the share
of studies with any is the family-wise error rate); `clear` (two recipes tied at the top, eight
below by 0.8 to 2.5 on the logit scale, 0.15 to 0.45 in score: every comparison is either a true
null or a difference both designs should find); `mixed` (the same with four of the eight only
0.2 to 0.6 below: differences near what the design can detect, where the two designs' verdicts
part when one of them misses). "At equal power": besides the ceiling design (5 seeds x 1000
items for every recipe), every smaller fixed design on a grid is run on the same draws, and the
cheapest one whose power against the baseline is at least the adaptive design's is the fair
comparison. `--oracle` runs, on the same drawn studies, the designs someone who knew the effect
sizes could fix in advance (`oracle`): how little a design may spend and still give the full
design's verdict.

    OMP_NUM_THREADS=1 uv run python benchmarks/adaptive_study.py --sims 200 --jobs 2 \
        --out benchmarks/adaptive_study.results.json
    OMP_NUM_THREADS=1 uv run python benchmarks/adaptive_study.py --oracle --sims 100 --jobs 2 \
        --seed-spread per-recipe pooled --scenarios clear mixed --out benchmarks/adaptive_study.oracle.results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from ftlab.compare.simulate import StudyModel
from ftlab.compare.stats import holm
from ftlab.study.adaptive_sim import BASE, declared, simulate, tested_once
from ftlab.study.sequential import BASELINE, BEST, Costs, Limits
from ftlab.study.spending import spending as spending_function

MODEL = StudyModel(level=0.4, item_sd=1.5, seed_sd=0.1, interaction_sd=0.3)
SCENARIOS = {"null": [0.0] * 10, "clear": [0.0, 0.0, -0.8, -0.8, -1.0, -1.2, -1.5, -1.8, -2.0, -2.5],
             "mixed": [0.0, 0.0, -0.2, -0.3, -0.4, -0.6, -0.8, -1.0, -1.5, -2.0]}
# Each recipe's seed spread as a multiple of the model's (1 when a scenario is not here): one
# recipe's seeds vary three times as much, as a high learning rate's might, which a pooled seed
# spread (analysis.seed_spread: pooled) assumes away.
SCENARIOS["null-wide"] = [0.0] * 10
SEED_SCALES = {"null-wide": [3.0] + [1.0] * 9}
SMALLER = [(s, n) for s in (3, 4, 5) for n in (200, 400, 700, 1000) if (s, n) != (5, 1000)]
COSTS = Costs(train_s=105.0, quantize_s=76.0, eval_item_s=0.15, tasks=3, variants=2)


def interval(k: int, n: int) -> list[float]:
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return [round(ci.low, 4), round(ci.high, 4)]


def _truths(differences) -> list:
    """The claims that are true: each recipe that differs from the baseline, below it."""
    return [(BASELINE, f"r{k}", -1) for k, d in enumerate(differences) if d != 0]


def _claims(differences) -> list:
    """Every claim "below" the verdict can make about a recipe: against the baseline and the best."""
    return [(kind, f"r{k}", -1) for kind in (BASELINE, BEST) for k in range(len(differences))]


def _power(declared: list[frozenset], truths: list) -> float | None:
    """The share of true differences against the baseline declared (None when there are none)."""
    return float(np.mean([[t in d for t in truths] for d in declared])) if truths else None


def run(name: str, sims: int, seed: int, spending: str, seed_spread: str = "per-recipe", futility: float = 0.0) -> dict:
    spending = spending_function(spending).name  # a registered name, or hwang-shih-decani:GAMMA
    limits = Limits(alpha=0.05, margin=0.03, max_seeds=5, max_items=1000, spending=spending, seed_spread=seed_spread,
                    futility=futility)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    smaller_designs = SMALLER if any(SCENARIOS[name]) else []  # with no true difference there is no power to match
    out = [simulate(MODEL, SCENARIOS[name], seeds=2, items=100, limits=limits, costs=COSTS, rng=rng,
                    fixed_designs=smaller_designs, seed_scales=SEED_SCALES.get(name)) for _ in range(sims)]
    any_adaptive = sum(bool(o.adaptive) for o in out)
    any_fixed = sum(bool(o.fixed) for o in out)
    # The same fixed design with Holm over the reported comparisons only (against the best and the
    # baseline), not over every pair: what choosing the best from the data does to the error rate.
    any_reported_only = sum(bool((holm(np.array([r.p_value for r in o.fixed_rows])) <= limits.alpha).any())
                            for o in out)
    agree = sum(o.adaptive == o.fixed for o in out)
    truths = _truths(SCENARIOS[name])
    concord = float(np.mean([[(c in o.adaptive) == (c in o.fixed) for c in _claims(SCENARIOS[name])] for o in out]))
    power = {"adaptive": _power([o.adaptive for o in out], truths), "fixed": _power([o.fixed for o in out], truths)}
    adaptive_s = float(np.mean([o.adaptive_s for o in out]))
    fixed_s = float(np.mean([o.fixed_s for o in out]))
    names = [f"r{k}" for k in range(len(SCENARIOS[name]))]
    smaller = []
    for s, n in smaller_designs:
        cost = COSTS.design({"base": (1, n), **{r: (s, n) for r in names}}, {"base": False, **{r: True for r in names}})
        smaller.append({"seeds": s, "items": n, "compute_hours": cost / 3600,
                        "power": _power([o.smaller[(s, n)] for o in out], truths),
                        "any_difference_declared": float(np.mean([bool(o.smaller[(s, n)]) for o in out]))})
    equal = None
    if truths:
        enough = [r for r in smaller if r["power"] >= power["adaptive"]] + (
            [{"seeds": 5, "items": 1000, "compute_hours": fixed_s / 3600, "power": power["fixed"]}]
            if power["fixed"] >= power["adaptive"] else [])
        if enough:
            equal = min(enough, key=lambda r: r["compute_hours"])
            equal = {**equal, "compute_ratio": adaptive_s / 3600 / equal["compute_hours"]}
    stops: dict[str, int] = {}
    for o in out:
        stops[o.stop] = stops.get(o.stop, 0) + 1
    return {"scenario": name, "differences": SCENARIOS[name], "seed_scales": SEED_SCALES.get(name),
            "spending": spending, "seed_spread": seed_spread, "futility": futility,
            "sims": sims,
            "any_difference_declared": {"adaptive": any_adaptive / sims, "adaptive_ci": interval(any_adaptive, sims),
                                        "fixed": any_fixed / sims, "fixed_ci": interval(any_fixed, sims),
                                        "fixed_holm_over_reported_only": any_reported_only / sims,
                                        "fixed_holm_over_reported_only_ci": interval(any_reported_only, sims)},
            "agreement_with_fixed": agree / sims, "agreement_ci": interval(agree, sims),
            "claim_concordance": concord, "power_vs_baseline": power if truths else None,
            "compute_hours": {"adaptive": adaptive_s / 3600, "fixed_ceiling": fixed_s / 3600},
            "compute_ratio_vs_ceiling": adaptive_s / fixed_s, "cheapest_fixed_at_equal_power": equal,
            "smaller_fixed_designs": smaller,
            "rounds_mean": float(np.mean([len(o.decisions) for o in out])), "stops": stops,
            "seconds": round(time.time() - t0, 1)}


# The designs an oracle may choose in hindsight (`oracle`): (seeds, items) of the configurations in
# a comparison near the ceiling's detection limit, and of the rest.
ORACLE_NEAR = [(5, 1000), (5, 700), (4, 1000)]
ORACLE_REST = [(2, 200), (3, 200), (3, 400), (5, 200), (5, 400), (5, 1000)]


def oracle(name: str, sims: int, seed: int, seed_spread: str = "per-recipe") -> dict:
    """What a design that knows in hindsight where each comparison stands could spend, on the same
    drawn studies as `run` (same seed: the first `sims` of them). The ceiling's verdict on every
    study gives each claim's rate; a recipe with a claim declared in 5-95% of studies is near the
    detection limit, and it, the base and the truly best recipes (what it is compared against) form
    the near group. Each pair (near group's design, the rest's design) on the grids above is tested
    once at the full alpha (no alpha spent on looks, no round learned from the data) and scored by
    agreement with the ceiling's verdict and compute. The oracle knows the effect sizes, not the
    draws: a design that stops each comparison when its own data decide it can beat it (the adaptive
    one does where differences are clear). What it measures is how much of the full design's data
    its verdict near the detection limit depends on."""
    limits = Limits(alpha=0.05, margin=0.03, max_seeds=5, max_items=1000, seed_spread=seed_spread)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    differences = SCENARIOS[name]
    names = [f"r{k}" for k in range(len(differences))]
    seeded = {BASE: False, **{r: True for r in names}}
    draws = [MODEL.draw_recipes(rng, differences, limits.max_seeds, limits.max_items, SEED_SCALES.get(name))
             for _ in range(sims)]
    caches = [{} for _ in draws]
    full = {BASE: (1, limits.max_items), **{r: (limits.max_seeds, limits.max_items) for r in names}}
    ceiling = [declared(tested_once(*d, full, limits=limits, cache=c)) for d, c in zip(draws, caches)]
    rate = {c: float(np.mean([c in v for v in ceiling])) for c in _claims(differences)}
    near = sorted({r for (_, r, _), v in rate.items() if 0.05 < v < 0.95})
    top = [r for r, d in zip(names, differences) if d == max(differences)]
    group = sorted({BASE, *top, *near})
    fixed_s = COSTS.design(full, seeded)
    truths = _truths(differences)
    rows = []
    for a in ORACLE_NEAR:
        for b in ORACLE_REST:
            designs = {r: (a if r in group else b) for r in names}
            designs[BASE] = (1, a[1])
            verdicts = [declared(tested_once(*d, designs, limits=limits, cache=c)) for d, c in zip(draws, caches)]
            agree = sum(v == c for v, c in zip(verdicts, ceiling))
            rows.append({"near_group": list(a), "rest": list(b), "agreement_with_ceiling": agree / sims,
                         "agreement_ci": interval(agree, sims), "power_vs_baseline": _power(verdicts, truths),
                         "compute_ratio_vs_ceiling": COSTS.design(designs, seeded) / fixed_s})
    enough = [r for r in rows if r["agreement_with_ceiling"] >= 0.95]
    floor = COSTS.design({r: full[r] for r in group}, seeded) / fixed_s
    return {"scenario": name, "differences": differences, "seed_spread": seed_spread, "sims": sims,
            "claim_rates_at_ceiling": {f"{k}:{r}": v for (k, r, _), v in rate.items()},
            "near_group": group, "near_group_at_ceiling_alone": floor, "designs": rows,
            "cheapest_at_95_agreement": min(enough, key=lambda r: r["compute_ratio_vs_ceiling"]) if enough else None,
            "power_at_ceiling": _power(ceiling, truths), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--spending", nargs="+", default=["obrien-fleming", "hwang-shih-decani", "hwang-shih-decani:-6"],
                        help="spending functions by name; hwang-shih-decani:GAMMA for another member of that family")
    parser.add_argument("--seed-spread", nargs="+", default=["per-recipe"], choices=["per-recipe", "pooled"],
                        help="the verdict's seed term: each recipe's own, or pooled over the study's recipes")
    parser.add_argument("--futility", nargs="+", type=float, default=[0.0],
                        help="predictive power below which an open comparison stops (0: never)")
    parser.add_argument("--scenarios", nargs="+", default=["null", "clear", "mixed"], choices=list(SCENARIOS))
    parser.add_argument("--jobs", type=int, default=1, help="scenarios run at once, one process (and core) each")
    parser.add_argument("--oracle", action="store_true",
                        help="instead of the adaptive design, the designs an oracle could choose in hindsight (`oracle`)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.oracle:
        cases = [(name, args.sims, args.seed + i, spread) for spread in args.seed_spread
                 for i, name in enumerate(SCENARIOS) if name in args.scenarios and any(SCENARIOS[name])]
        task = oracle
    else:
        cases = [(name, args.sims, args.seed + i, spending, spread, futility) for futility in args.futility
                 for spread in args.seed_spread for spending in args.spending
                 for i, name in enumerate(SCENARIOS) if name in args.scenarios]
        task = run
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(task, *zip(*cases)))
    for r in rows:
        print(json.dumps(r))
    if args.out:
        doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "sims": args.sims,
               "seed": args.seed, "model": MODEL.__dict__,
               "costs": COSTS.__dict__, "rows": rows}
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
