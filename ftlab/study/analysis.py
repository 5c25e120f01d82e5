"""The statistics behind a study's verdict, computed from collected per-item outcomes.

Pure functions over the engine's two frames (no model, no files):
- `samples`: one row per (model, task, item) with `recipe, seed, quant, task, index, correct,
  score, model, source_model`;
- `models`: one row per (model, task) with `recipe, seed, quant, task, model, source_model, n,
  size_bytes, samples_per_s, latency_mean_s` and one column per metric.
`analyze_study()` runs every step and returns a `StudyAnalysis` of DataFrames; `ftlab.study.report`
renders it. The rules, in one place:

- Level. A configuration (recipe x PTQ variant x task) with 2 or more seeds is inferred about as a
  *recipe*: its trained models are a sample of what the recipe produces, and every interval, test,
  tie and "too small to detect" call accounts for the seed-to-seed spread and for item sampling
  together (`ftlab.compare.crossed`: seeds and items are crossed; generalized inference). The base
  snapshot (and its PTQ variants) has no seed: one deterministic model, item variance only. A
  configuration with a single trained model can only be inferred about as that *model*: its
  comparisons say "these trained models differ on these items" (`level` = "model").
- Score. A configuration's score is the mean over its models of the per-model mean of the per-item
  `score` (f1 for span tasks, else 0/1 correctness); `seed_std` is the standard deviation of the
  per-model scores (ddof=1). The interval is the crossed interval at recipe level, else the
  percentile bootstrap over items of the single model.
- Tests. Two configurations are compared on the items every model of both answered. At recipe
  level (every seeded side has >= 2 seeds): two recipes trained with the same seeds are compared
  seed k against seed k (`pair_seeds`, the default: they share the data order; the crossed
  one-sample test of the per-seed differences), otherwise (other seed sets, the base, or
  `pair_seeds: false`) as independent samples (the crossed two-sample test). At model level:
  two single models by the exact McNemar test (with the paired bootstrap interval of the score
  difference), several models against one by the same inference over items only, on the per-item
  means (the models held fixed; a paired t over items, to Monte Carlo error).
- Against the baseline: a recipe at PTQ variant q is compared with the baseline at q when the
  baseline was quantized that way too, else with the unquantized baseline (`baseline_quant` says
  which). Holm's correction runs over the whole family (every recipe x quant x task test);
  `significant` means Holm-adjusted p <= alpha. `mdd` is the minimum detectable difference of the
  row's own test at alpha and power (seed spread included at recipe level); a difference is
  `undetectable` when it is not significant and smaller than that.
- Ties with the best: within a task and PTQ variant, every recipe against the top-ranked one;
  Holm's correction runs per task over every pair of the task's configurations (`family_size`
  tests), not only those with the best, which is chosen from the data (`compare_to_best`); `tied`
  means adjusted p > alpha.
- Recovery: each quantized model against its own `source_model` (never the base). At recipe level
  the per-model differences (quantized minus its source, same trained model) are the crossed
  one-sample test, the ratio's interval the delta method on the same inference; a single model
  keeps McNemar and the paired bootstrap. Holm runs over the recovery tests as their own family.
- Pareto: per task, over (recipe, quant) points: higher score, smaller size / lower latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftlab.compare.crossed import (
    CrossedResult,
    SeedPool,
    crossed_difference,
    crossed_mean,
    crossed_ratio,
    seed_pool,
    wider_than_pool,
)
from ftlab.compare.plots import pareto_front
from ftlab.compare.stats import (
    bootstrap_mean_interval, holm, mcnemar_exact, mcnemar_mdd, paired_bootstrap,
)
from ftlab.errors import ConfigError, FtlabError
from ftlab.study.levels import CROSSED, CROSSED_PAIRED, CROSSED_POOLED, ITEMS_T, POOLED, MCNEMAR, MODEL, NO_QUANT, RECIPE, UNSEEDED
from ftlab.study.spec import StudyAnalysisSettings
from ftlab.study.verdict import TaskVerdict, build_verdicts
SAMPLE_COLUMNS = ("recipe", "seed", "quant", "task", "index", "correct", "score", "model", "source_model")
MODEL_ID_COLUMNS = ("recipe", "seed", "quant", "task", "model", "source_model", "n", "size_bytes",
                    "samples_per_s", "latency_mean_s")
_FIRST_METRICS = ("accuracy", "macro_f1", "f1", "exact_match", "acc_norm")
_LAST_METRICS = ("fidelity_kl_mean", "fidelity_top1")

__all__ = ["StudyAnalysisSettings", "StudyAnalysis", "TaskVerdict", "analyze_study", "NO_QUANT", "RECIPE", "MODEL", "UNSEEDED"]


@dataclass
class StudyAnalysis:
    settings: StudyAnalysisSettings
    tidy: pd.DataFrame
    ranking: pd.DataFrame
    vs_baseline: pd.DataFrame
    vs_best: pd.DataFrame
    recovery: pd.DataFrame
    pareto: pd.DataFrame
    verdicts: list[TaskVerdict]
    notes: list[str]  # what could not be computed (a failed job's missing model) and why

    @property
    def one_seed(self) -> bool:
        """True when no trained recipe has 2 seeds: the verdict is about trained models only."""
        levels = set(self.ranking["level"])
        return MODEL in levels and RECIPE not in levels


def quant_order(quants) -> list[str]:
    """Unquantized first, then the PTQ variants by name."""
    names = sorted({str(q) for q in quants})
    return ([NO_QUANT] if NO_QUANT in names else []) + [q for q in names if q != NO_QUANT]


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FtlabError(f"study {what} frame lacks column(s) {', '.join(missing)}; it needs {', '.join(columns)}")


def _sort_configs(df: pd.DataFrame) -> pd.DataFrame:
    rank = {q: i for i, q in enumerate(quant_order(df["quant"]))}
    keyed = df.assign(_q=df["quant"].map(rank))
    keys = [k for k in ("task", "_q", "recipe", "seed", "model", "index") if k in keyed.columns]
    return keyed.sort_values(keys, kind="stable", na_position="first").drop(columns="_q").reset_index(drop=True)


def normalize_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """Checked, typed copy of the samples frame (bad input is a one-line FtlabError)."""
    _require(samples, SAMPLE_COLUMNS, "samples")
    if samples.empty:
        raise FtlabError("the study has no evaluated samples; run the study (or its evaluations) first")
    df = samples[list(SAMPLE_COLUMNS)].copy()
    df["seed"] = pd.array(df["seed"], dtype="Int64")
    for col in ("recipe", "quant", "task", "model"):
        df[col] = df[col].astype(str)
    df["index"] = df["index"].astype(int)
    df["correct"] = df["correct"].astype(bool)
    df["score"] = df["score"].astype(float)
    if df["score"].isna().any():
        bad = sorted(set(df.loc[df["score"].isna(), "model"]))
        raise FtlabError(f"samples of {', '.join(bad)} have no score; re-run `ftlab score` on them")
    dup = df.duplicated(["model", "task", "index"])
    if dup.any():
        r = df[dup].iloc[0]
        raise FtlabError(f"model {r.model} answered item {r['index']} of {r.task} twice in the samples frame")
    models = df.drop_duplicates(["model", "task"])
    clash = models.duplicated(["recipe", "seed", "quant", "task"], keep=False)
    if clash.any():
        r = models[clash].iloc[0]
        same = (models["recipe"] == r.recipe) & (models["quant"] == r.quant) & (models["task"] == r.task)
        names = sorted(models[clash & same]["model"])
        raise FtlabError(f"recipe {r.recipe!r} (seed {r.seed}, quant {r.quant}) has several models on {r.task}: "
                         f"{', '.join(names)}; give each grid point its own recipe label or seed")
    mixed = models.groupby(["recipe", "quant"])["seed"].agg(lambda s: 0 < s.isna().sum() < len(s))
    if mixed.any():
        recipe, quant = mixed[mixed].index[0]
        raise FtlabError(f"recipe {recipe!r} ({quant}) has models with and without a seed; seed all or none")
    return _sort_configs(df)


def tidy_frame(models: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, seed, quant, task): identity columns, then the metrics in a stable order."""
    _require(models, MODEL_ID_COLUMNS, "models")
    df = models.copy()
    df["seed"] = pd.array(df["seed"], dtype="Int64")
    metrics = [c for c in df.columns if c not in MODEL_ID_COLUMNS]
    first = [m for m in _FIRST_METRICS if m in metrics]
    last = [m for m in _LAST_METRICS if m in metrics]
    middle = sorted(m for m in metrics if m not in first and m not in last)
    return _sort_configs(df[[*MODEL_ID_COLUMNS, *first, *middle, *last]])


# ---------------------------------------------------------------------------------------------
# One configuration's models as matrices


@dataclass(frozen=True)
class Config:
    """One configuration's trained models on one task: rows are models (ordered by seed), columns items."""

    seeded: bool
    models: list[str]
    seeds: list
    items: np.ndarray  # the item indices every model answered
    score: np.ndarray  # models x items
    correct: np.ndarray  # models x items (bool)

    @property
    def recipe_level(self) -> bool:
        """A sample of trained models (2+ seeds), or one deterministic unseeded model: both support
        inference beyond the models in hand; a single seeded model does not."""
        return not self.seeded or len(self.models) >= 2

    def on(self, items: np.ndarray) -> Config:
        cols = np.searchsorted(self.items, items)
        return Config(self.seeded, self.models, self.seeds, items, self.score[:, cols], self.correct[:, cols])


def config_of(rows: pd.DataFrame) -> Config:
    seeded = bool(rows["seed"].notna().any())
    by_model = rows.sort_values(["seed", "model"], na_position="first")
    models = list(dict.fromkeys(by_model["model"]))
    score = rows.pivot(index="model", columns="index", values="score").loc[models]
    correct = rows.pivot(index="model", columns="index", values="correct").loc[models]
    keep = score.notna().all(axis=0).to_numpy()  # items every model answered
    seeds = [rows.loc[rows["model"] == m, "seed"].iloc[0] for m in models]
    return Config(seeded, models, seeds, score.columns.to_numpy()[keep].astype(int),
                  score.to_numpy(dtype=float)[:, keep], correct.to_numpy(dtype=bool)[:, keep])


def _configs(samples: pd.DataFrame) -> dict[tuple[str, str, str], pd.DataFrame]:
    return {key: g for key, g in samples.groupby(["task", "quant", "recipe"], sort=False)}


def _cross_counts(a: Config, b: Config) -> tuple[int, int, int]:
    """(A right & B wrong, A wrong & B right, pairs) over every (model of A, model of B, item): the
    McNemar counts for two single models, a description of disagreement otherwise."""
    ka, kb = a.correct.sum(axis=0), b.correct.sum(axis=0)
    sa, sb = a.correct.shape[0], b.correct.shape[0]
    return int((ka * (sb - kb)).sum()), int(((sa - ka) * kb).sum()), sa * sb * a.correct.shape[1]


def _crossed_fields(res: CrossedResult, settings: StudyAnalysisSettings) -> dict:
    """The columns of a t-based row; a difference of two scores lies in [-1, 1], so its interval is cut to it."""
    return {"diff": res.estimate, "ci_low": max(-1.0, res.ci_low), "ci_high": min(1.0, res.ci_high),
            "p_value": res.p_value,
            "se": res.se, "seed_part": res.seed_part, "item_part": res.item_part,
            "mdd": score_scale_mdd(res.mdd(settings.alpha, settings.power))}


def score_scale_mdd(mdd: float) -> float:
    """A minimum detectable difference beyond the score scale (more than 1) is none: +inf."""
    return math.inf if mdd > 1 else mdd


def recipe_test(a: Config, b: Config, *, pair_seeds: bool, confidence: float,
                pool: SeedPool | None = None) -> tuple[str, CrossedResult]:
    """B - A at recipe level (each side 2+ seeds, or one unseeded model), on the items both rows
    hold: two recipes trained with the same seeds, seed k with seed k when `pair_seeds` (both rows
    ordered by seed; the one-sample inference on the differences), else as independent samples.
    `pool`: the seed spread pooled over the family's recipes (`ftlab.compare.crossed.SeedPool`),
    with the seeds as independent samples."""
    if pool is not None:
        return CROSSED_POOLED, crossed_difference(a.score, b.score, seeded_a=a.seeded, seeded_b=b.seeded,
                                                  confidence=confidence, pool=pool)
    if pair_seeds and a.seeded and b.seeded and sorted(a.seeds) == sorted(b.seeds):
        return CROSSED_PAIRED, crossed_mean(b.score - a.score, confidence=confidence)
    return CROSSED, crossed_difference(a.score, b.score, seeded_a=a.seeded, seeded_b=b.seeded, confidence=confidence)


def _pooled_groups(configs: dict) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """(task, quant) -> recipe -> its models x items, for the seeded recipes with 2+ seeds."""
    groups: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for (task, quant, recipe), g in configs.items():
        c = config_of(g)
        if c.seeded and len(c.models) >= 2:
            groups.setdefault((task, quant), {})[recipe] = c.score
    return groups


def seed_pools(configs: dict, settings: StudyAnalysisSettings) -> dict[tuple[str, str], SeedPool | None]:
    """(task, quant) -> the seed spread pooled over its seeded recipes with 2+ seeds, when
    `analysis.seed_spread` is pooled (else empty: every recipe has its own)."""
    if settings.seed_spread != POOLED:
        return {}
    return {key: seed_pool(list(scores.values())) for key, scores in _pooled_groups(configs).items()}


POOL_CHECK_LEVEL = 0.05


def wider_than_the_pool(samples: pd.DataFrame, settings: StudyAnalysisSettings) -> list[str]:
    """With a pooled seed spread: a note for each recipe whose seeds vary more than the other
    recipes' pool allows (`ftlab.compare.crossed.wider_than_pool` at POOL_CHECK_LEVEL), per task and
    quant variant. A warning, not a safeguard: with 2 seeds it flags a recipe whose seeds vary three
    times as much in a third of studies (tests/compare/test_seed_pool.py)."""
    if settings.seed_spread != POOLED:
        return []
    out = []
    for (task, quant), scores in _pooled_groups(_configs(samples)).items():
        for recipe, p in zip(scores, wider_than_pool(list(scores.values()))):
            if p < POOL_CHECK_LEVEL:
                out.append(f"{task} ({quant}): {recipe}'s seeds vary more than the other recipes' pooled seed spread "
                           f"(F test p {p:.2g}); its comparisons under analysis.seed_spread: pooled may be too "
                           f"sure; analysis.seed_spread: per-recipe does not assume the recipes vary alike")
    return out


def compare_configs(a: Config, b: Config, settings: StudyAnalysisSettings, pool: SeedPool | None = None) -> dict | None:
    """B - A on the items both answered; None when they share fewer than 2 items. The test is the
    one the data support (module docstring): seeds x items at recipe level, McNemar for two single
    models, items only (the models fixed) otherwise. `pool`: the pooled seed spread of their task
    (`seed_pools`)."""
    items = np.intersect1d(a.items, b.items)
    if items.size < 2:
        return None
    a, b = a.on(items), b.on(items)
    a_only, b_only, pairs = _cross_counts(a, b)
    out = {"seeds_a": len(a.models), "seeds_b": len(b.models), "seeded_a": a.seeded, "seeded_b": b.seeded,
           "n_items": int(items.size), "n_pairs": pairs,
           "a_only": a_only, "b_only": b_only, "discordance": (a_only + b_only) / pairs,
           "diff_correct": (b_only - a_only) / pairs, "score_a": float(a.score.mean()),
           "score_b": float(b.score.mean()), "bootstrap_p": math.nan}
    if (a.seeded or b.seeded) and a.recipe_level and b.recipe_level:
        test, res = recipe_test(a, b, pair_seeds=settings.pair_seeds, confidence=settings.confidence, pool=pool)
        return {**out, "level": RECIPE, "test": test, **_crossed_fields(res, settings)}
    if len(a.models) == 1 and len(b.models) == 1:
        mc = mcnemar_exact(a.correct[0], b.correct[0])
        bs = paired_bootstrap(a.score[0], b.score[0], resamples=settings.resamples,
                              confidence=settings.confidence, seed=settings.bootstrap_seed)
        mdd = mcnemar_mdd(mc.n, out["discordance"], alpha=settings.alpha, power=settings.power)
        return {**out, "level": MODEL, "test": MCNEMAR, "diff": bs.diff, "ci_low": bs.ci_low, "ci_high": bs.ci_high,
                "p_value": mc.p_value, "bootstrap_p": bs.p_value, "se": math.nan,
                "seed_part": math.nan, "item_part": math.nan, "mdd": mdd}
    # Several models against one (a failed seed, or one seed on one side): the models held fixed.
    res = crossed_difference(a.score.mean(axis=0, keepdims=True), b.score.mean(axis=0, keepdims=True),
                             seeded_a=False, seeded_b=False, confidence=settings.confidence)
    return {**out, "level": MODEL, "test": ITEMS_T, **_crossed_fields(res, settings)}


def _effect(df: pd.DataFrame) -> pd.Series:
    """The difference a row's MDD is in: accuracy for McNemar (Connor's relation), else the score."""
    return df["diff_correct"].where(df["test"] == MCNEMAR, df["diff"])


# ---------------------------------------------------------------------------------------------
# Tables


def rank_recipes(samples: pd.DataFrame, settings: StudyAnalysisSettings) -> pd.DataFrame:
    """Per task and PTQ variant ("none" first), recipes ranked by mean score over seeds."""
    rows = []
    configs = _configs(samples)
    pools = seed_pools(configs, settings)
    for (task, quant, recipe), g in configs.items():
        c = config_of(g)
        per_model = g.groupby("model")["score"].mean()
        if c.seeded and len(c.models) >= 2:
            res = crossed_mean(c.score, confidence=settings.confidence, pool=pools.get((task, quant)))
            # A score lies in [0, 1] (0/1 correctness or F1): the t interval is cut to it, which
            # cannot lower its coverage.
            lo, hi, level = max(0.0, res.ci_low), min(1.0, res.ci_high), RECIPE
        else:
            lo, hi = bootstrap_mean_interval(g.groupby("index")["score"].mean().to_numpy(),
                                             resamples=settings.resamples, confidence=settings.confidence,
                                             seed=settings.bootstrap_seed)
            level = MODEL if c.seeded else UNSEEDED
        rows.append({"task": task, "quant": quant, "recipe": recipe, "baseline": recipe == settings.baseline,
                     "level": level, "seeded": c.seeded, "seeds": len(per_model),
                     "seed_list": ", ".join(str(s) for s in c.seeds if not pd.isna(s)),
                     "n_items": int(g["index"].nunique()), "mean": float(per_model.mean()),
                     "seed_std": float(per_model.std(ddof=1)) if len(per_model) > 1 else np.nan,
                     "ci_low": lo, "ci_high": hi})
    df = pd.DataFrame(rows)
    order = {q: i for i, q in enumerate(quant_order(df["quant"]))}
    df = df.assign(_q=df["quant"].map(order), _m=-df["mean"])
    df = df.sort_values(["task", "_q", "_m", "recipe"], kind="stable").drop(columns=["_q", "_m"])
    df.insert(2, "rank", df.groupby(["task", "quant"]).cumcount() + 1)
    return df.reset_index(drop=True)


def _holm_flags(df: pd.DataFrame, *, within=None) -> pd.DataFrame:
    if df.empty:
        return df.assign(p_holm=pd.Series(dtype=float))
    if within is None:
        adjusted = holm(df["p_value"].to_numpy())
    else:
        adjusted = df.groupby(within)["p_value"].transform(lambda p: holm(p.to_numpy())).to_numpy()
    return df.assign(p_holm=adjusted)


def _comparison_columns(a: str, *, first: list[str]) -> list[str]:
    return ["task", "quant", *first, "level", "test", f"{a}_seeded", "seeded", f"{a}_seeds", "seeds", "n_items", "n_pairs", f"{a}_only",
            "recipe_only", "discordance", "diff_correct", f"{a}_score", "recipe_score", "diff", "ci_low", "ci_high",
            "se", "seed_part", "item_part", "p_value", "bootstrap_p", "mdd"]


def _rename(test: dict, a: str, b: str) -> dict:
    names = {"a_only": f"{a}_only", "b_only": f"{b}_only", "score_a": f"{a}_score", "score_b": f"{b}_score",
             "seeds_a": f"{a}_seeds", "seeds_b": "seeds", "seeded_a": f"{a}_seeded", "seeded_b": "seeded"}
    return {names.get(k, k): v for k, v in test.items()}


def compare_to_baseline(samples: pd.DataFrame, ranking: pd.DataFrame, settings: StudyAnalysisSettings,
                        notes: list[str]) -> pd.DataFrame:
    """Every recipe x quant x task against the baseline; Holm over the whole family."""
    configs = _configs(samples)
    pools = seed_pools(configs, settings)
    rows = []
    for r in ranking.itertuples(index=False):
        if r.recipe == settings.baseline:
            continue
        base_quant = r.quant if (r.task, r.quant, settings.baseline) in configs else NO_QUANT
        base = configs.get((r.task, base_quant, settings.baseline))
        if base is None:
            notes.append(f"{r.task}: baseline {settings.baseline!r} was not evaluated; {r.recipe} ({r.quant}) is not tested")
            continue
        test = compare_configs(config_of(base), config_of(configs[(r.task, r.quant, r.recipe)]), settings,
                               pools.get((r.task, r.quant)))
        if test is None:
            notes.append(f"{r.task}: {r.recipe} ({r.quant}) shares no item with the baseline; not tested")
            continue
        rows.append({"task": r.task, "quant": r.quant, "recipe": r.recipe, "baseline_quant": base_quant,
                     **_rename(test, "baseline", "recipe")})
    columns = _comparison_columns("baseline", first=["recipe", "baseline_quant"])
    df = _holm_flags(pd.DataFrame(rows, columns=columns))
    significant = df["p_holm"] <= settings.alpha
    return df.assign(significant=significant, undetectable=~significant & (_effect(df).abs() < df["mdd"]))


def compare_to_best(samples: pd.DataFrame, ranking: pd.DataFrame, settings: StudyAnalysisSettings) -> pd.DataFrame:
    """Within each task and PTQ variant, every recipe against the top-ranked one. Holm's correction
    runs per task over every pair of the task's configurations, of which the reported comparisons
    with the best are a part: the best is chosen from the data, so it tends to sit at the top by
    luck, and Holm over the comparisons with it alone declares too many differences (in simulated
    studies of 10 identical recipes, 6.5% of them at alpha 0.05: benchmarks/adaptive_study.md; the
    rule here is checked against alpha in tests/study/test_best_calibration.py). The family of all pairs does not depend on which recipe ranked
    first, so Holm over it holds alpha whatever the ranking."""
    configs = _configs(samples)
    pools = seed_pools(configs, settings)
    rows, others = [], []  # the reported comparisons; the rest of the task's pairs (their p-values)
    for (task, quant), g in ranking.groupby(["task", "quant"], sort=False):
        names = list(g["recipe"])
        best = names[0]
        for i, first in enumerate(names):
            for recipe in names[i + 1:]:
                test = compare_configs(config_of(configs[(task, quant, first)]),
                                       config_of(configs[(task, quant, recipe)]), settings, pools.get((task, quant)))
                if test is None:
                    continue
                if first == best:
                    rows.append({"task": task, "quant": quant, "best": best, "recipe": recipe,
                                 **_rename(test, "best", "recipe")})
                else:
                    others.append({"task": task, "p_value": test["p_value"]})
    df = pd.DataFrame(rows, columns=_comparison_columns("best", first=["best", "recipe"]))
    family = pd.concat([df[["task", "p_value"]].assign(reported=True),
                        pd.DataFrame(others, columns=["task", "p_value"]).assign(reported=False)], ignore_index=True)
    family = _holm_flags(family, within="task")
    df = df.assign(p_holm=family.loc[family["reported"], "p_holm"].to_numpy(),
                   family_size=family.groupby("task")["p_value"].transform("count")[family["reported"]].to_numpy())
    return df.assign(tied=~(df["p_holm"] <= settings.alpha))  # an untestable (NaN) row is not "below"


_RECOVERY_COLUMNS = ["task", "recipe", "quant", "source_quant", "level", "test", "models", "n_items", "n_pairs",
                     "source_score", "quant_score", "diff", "ratio", "ci_low", "ci_high", "source_only",
                     "quant_only", "p_value"]


def quantization_recovery(samples: pd.DataFrame, settings: StudyAnalysisSettings, notes: list[str]) -> pd.DataFrame:
    """Each quantized model against its own unquantized source, pooled over the recipe's seeds."""
    by_model = {key: g for key, g in samples.groupby(["model", "task"], sort=False)}
    quantized = samples[samples["source_model"].notna()]
    rows = []
    for (task, quant, recipe), g in _configs(quantized).items():
        sources = {}
        for model, m in g.groupby("model", sort=True):
            source_name = str(m["source_model"].iloc[0])
            if (source_name, task) in by_model:
                sources[model] = by_model[(source_name, task)]
            else:
                notes.append(f"{task}: {model} has no evaluated source {source_name}; its recovery is not computed")
        if not sources:
            continue
        # Row k of both is one trained model: a source and its quantized model share their seed.
        q = config_of(g[g["model"].isin(list(sources))])
        src = config_of(pd.concat(sources[m] for m in q.models))
        items = np.intersect1d(q.items, src.items)
        q, src = q.on(items), src.on(items)
        row = {"task": task, "recipe": recipe, "quant": quant,
               "source_quant": ", ".join(sorted({str(f["quant"].iloc[0]) for f in sources.values()})),
               "models": len(q.models), "n_items": len(items), "n_pairs": q.score.size,
               "source_score": float(src.score.mean()), "quant_score": float(q.score.mean()),
               "diff": float((q.score - src.score).mean()),
               "source_only": int((src.correct & ~q.correct).sum()), "quant_only": int((~src.correct & q.correct).sum())}
        if q.seeded and len(q.models) >= 2:
            res = crossed_mean(q.score - src.score, confidence=settings.confidence)
            ratio, lo, hi = crossed_ratio(src.score, q.score, confidence=settings.confidence)
            row.update(level=RECIPE, test=CROSSED, ratio=ratio, ci_low=max(0.0, lo), ci_high=hi,  # a ratio is >= 0
                       p_value=res.p_value)
        else:
            mc = mcnemar_exact(src.correct.ravel(), q.correct.ravel())
            bs = paired_bootstrap(src.score.mean(axis=0), q.score.mean(axis=0), resamples=settings.resamples,
                                  confidence=settings.confidence, seed=settings.bootstrap_seed)
            row.update(level=MODEL, test=MCNEMAR, ratio=bs.ratio, ci_low=bs.ratio_low, ci_high=bs.ratio_high,
                       p_value=mc.p_value)
        rows.append(row)
    df = _holm_flags(pd.DataFrame(rows, columns=_RECOVERY_COLUMNS))
    return df.assign(significant=df["p_holm"] <= settings.alpha)


def pareto_fronts(ranking: pd.DataFrame, tidy: pd.DataFrame) -> pd.DataFrame:
    """Per task, each (recipe, quant) point with its mean size and latency over seeds, and whether
    it is on the score-vs-size and score-vs-latency fronts (a point with a missing axis is not)."""
    axes = tidy.groupby(["task", "quant", "recipe"], sort=False)[["size_bytes", "latency_mean_s"]].mean()
    df = ranking[["task", "quant", "recipe", "mean"]].merge(axes.reset_index(), on=["task", "quant", "recipe"],
                                                             how="left")
    df = df.rename(columns={"mean": "score"})
    for axis, flag in (("size_bytes", "on_size_front"), ("latency_mean_s", "on_latency_front")):
        df[flag] = False
        for _, g in df.groupby("task", sort=False):
            known = g.dropna(subset=[axis, "score"])
            if not known.empty:
                front = pareto_front(known[axis].to_numpy(), known["score"].to_numpy())
                df.loc[known.index[front], flag] = True
    return df


def analyze_study(samples: pd.DataFrame, models: pd.DataFrame,
                  settings: StudyAnalysisSettings | None = None) -> StudyAnalysis:
    """Every table of the verdict: ranking, tests vs the baseline and vs the best, recovery, Pareto."""
    settings = settings or StudyAnalysisSettings()
    problems = settings.validate()
    if problems:
        raise ConfigError(problems)
    samples = normalize_samples(samples)
    tidy = tidy_frame(models)
    recipes = sorted(set(samples["recipe"]))
    if settings.baseline not in recipes:
        raise FtlabError(f"baseline {settings.baseline!r} is not a recipe of the study; evaluated: {', '.join(recipes)}")
    notes: list[str] = []
    ranking = rank_recipes(samples, settings)
    vs_baseline = compare_to_baseline(samples, ranking, settings, notes)
    vs_best = compare_to_best(samples, ranking, settings)
    recovery = quantization_recovery(samples, settings, notes)
    notes += wider_than_the_pool(samples, settings)
    pareto = pareto_fronts(ranking, tidy)
    single = ranking[ranking["level"] == MODEL]
    if not single.empty and (ranking["level"] == RECIPE).any():
        names = ", ".join(sorted(set(single["recipe"])))
        notes.append(f"{names}: one trained model each (a seed failed or was not run); their comparisons are about "
                     f"those models, not recipes")
    verdicts = build_verdicts(ranking, vs_baseline, vs_best, recovery, settings)
    return StudyAnalysis(settings, tidy, ranking, vs_baseline, vs_best, recovery, pareto, verdicts, notes)
