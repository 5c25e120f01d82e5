"""Whole adaptive studies on simulated outcomes, against the fixed design that spends everything.

A study of K recipes and the base snapshot is drawn once at the ceiling (`max_seeds` seeds x
`max_items` items, `ftlab.compare.simulate.StudyModel.draw_recipes`); the adaptive design then
sees, round by round, only the seeds and items it has asked for, and decides with the very code a
real study runs (`ftlab.study.sequential.decide`). The fixed design sees everything and tests the
same family once at the full alpha. tests/study/test_adaptive_calibration.py and
benchmarks/adaptive_study.py read the outcomes: the declared differences of each design, the
rounds, and the compute each spent (from `Costs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftlab.compare.simulate import StudyModel
from ftlab.study.analysis import Config
from ftlab.study.sequential import (
    DIFFERENT,
    Costs,
    Decision,
    Limits,
    decide,
    look,
    next_designs,
)

BASE = "base"
TASK = "task"


@dataclass(frozen=True)
class SimOutcome:
    adaptive: frozenset  # (kind, recipe, sign) of every difference the adaptive design declared (`declared`)
    fixed: frozenset  # the same for the fixed design
    decisions: list[Decision]
    adaptive_s: float  # compute of the adaptive design
    fixed_s: float  # compute of the fixed design (every recipe at the ceiling)
    stop: str
    smaller: dict  # (seeds, items) -> the declared differences of that smaller fixed design, same draws
    fixed_rows: list  # the fixed design's rows (their raw p-values let a caller try another correction)


def _config(outcomes: np.ndarray, seeded: bool) -> Config:
    s, n = outcomes.shape
    return Config(seeded, [f"m{k}" for k in range(s)], list(range(s)) if seeded else [None], np.arange(n),
                  outcomes, outcomes.astype(bool))


def _arms(recipes: np.ndarray, base: np.ndarray, designs: dict[str, tuple[int, int]]) -> dict:
    configs = {BASE: _config(base[:, :designs[BASE][1]], seeded=False)}
    for k in range(recipes.shape[0]):
        s, n = designs[f"r{k}"]
        configs[f"r{k}"] = _config(recipes[k, :s, :n], seeded=True)
    return {TASK: configs}


def declared(rows) -> frozenset:
    """The verdict's claims: (BASELINE, recipe, sign): the recipe differs from the baseline in that
    direction; (BEST, recipe, -1): the recipe is below the best (whichever recipe ranked best)."""
    return frozenset((r.kind, r.recipe, int(np.sign(r.estimate))) for r in rows if r.state == DIFFERENT)


def tested_once(recipes: np.ndarray, base: np.ndarray, designs: dict[str, tuple[int, int]], *, limits: Limits,
                cache: dict | None = None) -> list:
    """The family's rows of a design tested once at the full alpha, on the first seeds and items of a
    drawn study: `designs`, each configuration's (seeds, items) (`BASE` and r0, r1, ...). A fixed
    design gives every recipe the same; a design chosen in hindsight (benchmarks/adaptive_study.py,
    `--oracle`) need not. `cache`: see `ftlab.study.sequential._pairs`."""
    return look(_arms(recipes, base, designs), baseline=BASE, alpha=limits.alpha, margin=limits.margin,
                pair_seeds=limits.pair_seeds, round_no=1, cache=cache, pooled=limits.pooled)


def simulate(model: StudyModel, differences, *, seeds: int, items: int, limits: Limits, costs: Costs,
             rng: np.random.Generator, fixed_designs=(), seed_scales=None) -> SimOutcome:
    """One simulated study run adaptively from (seeds, items) and as the fixed ceiling design (and
    as each smaller fixed design in `fixed_designs`, (seeds, items) pairs, on the same draws).
    `seed_scales`: each recipe's seed spread as a multiple of the model's."""
    recipes, base = model.draw_recipes(rng, differences, limits.max_seeds, limits.max_items, seed_scales)
    names = [f"r{k}" for k in range(recipes.shape[0])]
    seeded = {BASE: False, **{n: True for n in names}}
    designs = {BASE: (1, items), **{n: (seeds, items) for n in names}}
    frontier, earlier, decisions = (seeds, items), None, []
    cache: dict = {}  # a configuration is always the first rows and columns of its draw
    for round_no in range(1, 100):
        decision = decide(_arms(recipes, base, designs), baseline=BASE, limits=limits, round_no=round_no,
                          frontier=frontier, designs=designs, earlier=earlier, costs=costs, cache=cache)
        decisions.append(decision)
        if decision.stop:
            break
        designs = next_designs(designs, decision, seeded)
        frontier, earlier = decision.next_frontier, decision

    def fixed(s: int, n: int) -> list:
        return tested_once(recipes, base, {BASE: (1, n), **{name: (s, n) for name in names}}, limits=limits,
                           cache=cache)

    full = {BASE: (1, limits.max_items), **{n: (limits.max_seeds, limits.max_items) for n in names}}
    rows = fixed(limits.max_seeds, limits.max_items)
    return SimOutcome(declared(decisions[-1].rows), declared(rows), decisions, costs.design(designs, seeded),
                      costs.design(full, seeded), decisions[-1].stop,
                      {(s, n): declared(fixed(s, n)) for s, n in fixed_designs}, rows)
