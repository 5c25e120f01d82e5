"""Simulated studies of two recipes, for checking what a verdict's error rates really are.

A study is drawn from a logistic model with the two sources of variance that a recipe comparison
must face, every trained model answering the same items:

    P(model s of recipe r answers item i) = sigmoid(level + d_i + g_ri + u_rs + difference * [r = B])

d_i ~ N(0, item_sd^2): item difficulty, shared by every model;
g_ri ~ N(0, interaction_sd^2): how much the recipe suits the item, shared by the recipe's seeds
(identical recipes have none; recipes that differ per item but not on average do);
u_rs ~ N(0, seed_sd^2): the trained model's own luck (initialisation, data order, dropout);
seed k's effects of recipes A and B correlate by `seed_correlation` (what a shared data order
could cause), 0 by default; recipe B may have its own seed spread (`seed_sd_b`). An untrained
base model (`draw(base=True)`) is one deterministic model on the same items whose expected score
equals recipe A's.

`tests/compare/test_verdict_calibration.py` and `benchmarks/verdict_calibration.py` use it to measure the
false-positive rate (difference 0) and the power of the study verdict's tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StudyModel:
    level: float = -0.8  # logit of an average item (score about 0.3 at item_sd 1.5)
    item_sd: float = 1.5
    seed_sd: float = 0.0
    interaction_sd: float = 0.0
    difference: float = 0.0  # recipe B's shift on the logit scale
    seed_correlation: float = 0.0

    seed_sd_b: float | None = None  # recipe B's own seed spread when it differs from A's

    def draw(self, rng: np.random.Generator, sims: int, seeds: int, items: int,
             base: bool = False) -> tuple[np.ndarray, ...]:
        """(A, B): two arrays of 0/1 outcomes, shape (sims, seeds, items); with `base`, also an
        untrained base model's outcomes on the same items, shape (sims, 1, items): one
        deterministic model whose expected score over the item population equals recipe A's (its
        effect solves that), so "recipe A vs the base" has a true difference of 0."""
        d = rng.normal(0, self.item_sd, (sims, 1, items))
        shared = rng.normal(0, 1, (sims, seeds, 1))
        out = []
        for shift, spread in ((0.0, self.seed_sd), (self.difference, self.seed_sd_b if self.seed_sd_b is not None
                                                     else self.seed_sd)):
            g = rng.normal(0, self.interaction_sd, (sims, 1, items))
            own = rng.normal(0, 1, (sims, seeds, 1))
            rho = self.seed_correlation
            u = spread * (np.sqrt(rho) * shared + np.sqrt(1 - rho) * own)
            p = _sigmoid(self.level + d + g + u + shift)
            out.append((rng.random(p.shape) < p).astype(float))
        if base:
            p = _sigmoid(self.level + d + matched_base_effect(self))
            out.append((rng.random(p.shape) < p).astype(float))
        return tuple(out)


    def draw_recipes(self, rng: np.random.Generator, differences, seeds: int, items: int,
                     seed_scales=None) -> tuple[np.ndarray, np.ndarray]:
        """A study of several recipes on the same items, and its untrained base: (recipes, base) of
        0/1 outcomes, shapes (K, seeds, items) and (1, items). Recipe k has its own item
        interactions and seed effects (sd seed_sd times seed_scales[k], default 1) and is shifted
        by differences[k] on the logit scale; the base is one deterministic model whose expected
        score equals an unshifted recipe's."""
        d = rng.normal(0, self.item_sd, (1, 1, items))
        shift = np.asarray(differences, dtype=float)[:, None, None]
        g = rng.normal(0, self.interaction_sd, (shift.shape[0], 1, items))
        scale = np.ones(shift.shape[0]) if seed_scales is None else np.asarray(seed_scales, dtype=float)
        u = self.seed_sd * scale[:, None, None] * rng.normal(0, 1, (shift.shape[0], seeds, 1))
        p = _sigmoid(self.level + d + g + u + shift)
        recipes = (rng.random(p.shape) < p).astype(float)
        p_base = _sigmoid(self.level + d[0] + matched_base_effect(self))
        return recipes, (rng.random(p_base.shape) < p_base).astype(float)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def expected_score(model: StudyModel, seed_effect: float = 0.0) -> float:
    """Recipe A's score over the whole population of items for a trained model with this seed
    effect (Gauss-Hermite quadrature over the item difficulty)."""
    x, w = np.polynomial.hermite.hermgauss(80)
    return float((w * _sigmoid(model.level + np.sqrt(2) * model.item_sd * x + seed_effect)).sum() / np.sqrt(np.pi))


def matched_base_effect(model: StudyModel) -> float:
    """The fixed effect a deterministic model needs for its expected score to equal recipe A's
    mean over seeds (which Jensen's inequality moves away from a seed effect of 0)."""
    from scipy.optimize import brentq  # lazy: scipy.stats takes 1.8 s

    target = expected_recipe_score(model)
    return float(brentq(lambda e: expected_score(model, e) - target, -10, 10))


def expected_recipe_score(model: StudyModel) -> float:
    """Recipe A's expected score over seeds and the item population."""
    x, w = np.polynomial.hermite.hermgauss(40)
    scores = np.array([expected_score(model, np.sqrt(2) * model.seed_sd * u) for u in x])
    return float((w * scores).sum() / np.sqrt(np.pi))


def score_spread(model: StudyModel) -> float:
    """The standard deviation of recipe A's score across trained models, over the whole population
    of items: what a researcher would call this model's seed spread (beyond item noise)."""
    x, w = np.polynomial.hermite.hermgauss(40)
    scores = np.array([expected_score(model, np.sqrt(2) * model.seed_sd * u) for u in x])
    mean = (w * scores).sum() / np.sqrt(np.pi)  # expected_recipe_score, from the scores at hand
    return float(np.sqrt(max(0.0, (w * (scores - mean) ** 2).sum() / np.sqrt(np.pi))))
