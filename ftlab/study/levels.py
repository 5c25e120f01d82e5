"""The words the study's analysis tables and its verdict share: what a row's inference is about
(`level`), which test gave its p-value (`test`), and the quant column of unquantized models."""

from __future__ import annotations

NO_QUANT = "none"
RECIPE, MODEL, UNSEEDED = "recipe", "model", "no seed"  # what a row's inference is about
CROSSED, CROSSED_PAIRED, MCNEMAR, ITEMS_T = ("seeds x items", "seeds x items, paired by seed", "McNemar",
                                            "items, models fixed")
CROSSED_POOLED = "seeds x items, seed spread pooled"
# analysis.seed_spread: each recipe's own seed spread, or one pooled over the task's recipes
# (ftlab.compare.crossed.SeedPool).
PER_RECIPE, POOLED = "per-recipe", "pooled"
SEED_SPREADS = (PER_RECIPE, POOLED)
