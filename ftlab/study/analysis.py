"""The statistics behind a study's verdict, computed from collected per-item outcomes.

Pure functions over the engine's two frames (no model, no files):
- `samples`: one row per (model, task, item) with `recipe, seed, quant, task, index, correct,
  score, model, source_model`;
- `models`: one row per (model, task) with `recipe, seed, quant, task, model, source_model, n,
  size_bytes, samples_per_s, latency_mean_s` and one column per metric.
`analyze_study()` runs every step and returns a `StudyAnalysis` of DataFrames; `ftlab.study.report`
renders it. The rules, in one place:

- Score. A model's score on a task is the mean of its per-item `score` (f1 for span tasks, else
  0/1 correctness). A recipe's score is the mean over its seeds; `seed_std` is the standard
  deviation of the per-seed scores (ddof=1, NaN with one seed). The interval is a percentile
  bootstrap over items of the per-item mean-over-seeds score: it measures item sampling, not
  seed-to-seed variation (that is what the seed std is for).
- Pairing. Two configurations are compared on the items both answered, seed by seed when both
  have seeds; a configuration without seeds (the base snapshot) is paired, with its single
  outcome, against every seed of the other. McNemar (exact) pools all these (seed, item) pairs;
  note that it treats them as independent, while the paired bootstrap of the mean difference
  works on per-item means over the paired seeds and so keeps an item's seeds together.
- Tests against the baseline: a recipe at PTQ variant q is compared with the baseline at q when
  the baseline was quantized that way too, else with the unquantized baseline (`baseline_quant`
  says which). Holm's correction runs over the whole family (every recipe x quant x task test);
  `significant` means Holm-adjusted McNemar p <= alpha. `mdd` is the McNemar minimum detectable
  accuracy difference at the pooled pair count and observed discordance (`mcnemar_mdd`); a
  difference is `undetectable` when it is not significant and |diff_correct| < mdd.
- Ties with the best: within a task and PTQ variant, every recipe against the top-ranked one
  (pooled McNemar), Holm-corrected over the task's tests; `tied` means adjusted p > alpha.
- Recovery: each quantized model against its own `source_model` (never the base), pooled over
  the recipe's seeds; ratio = quantized / source mean score with a paired bootstrap interval;
  Holm runs over the recovery tests as their own family.
- Pareto: per task, over (recipe, quant) points: higher score, smaller size / lower latency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftlab.compare.plots import pareto_front
from ftlab.compare.stats import (
    bootstrap_mean_interval, holm, mcnemar_exact, mcnemar_mdd, paired_bootstrap,
)
from ftlab.config import doc_field
from ftlab.errors import ConfigError, FtlabError

NO_QUANT = "none"
SAMPLE_COLUMNS = ("recipe", "seed", "quant", "task", "index", "correct", "score", "model", "source_model")
MODEL_ID_COLUMNS = ("recipe", "seed", "quant", "task", "model", "source_model", "n", "size_bytes",
                    "samples_per_s", "latency_mean_s")
_FIRST_METRICS = ("accuracy", "macro_f1", "f1", "exact_match", "acc_norm")
_LAST_METRICS = ("fidelity_kl_mean", "fidelity_top1")


@dataclass(frozen=True)
class StudyAnalysisSettings:
    baseline: str = doc_field("base", "recipe every other is tested against ('base' = the base snapshot)")
    alpha: float = doc_field(0.05, "family-wise error rate of the Holm-corrected tests")
    power: float = doc_field(0.8, "power at which the minimum detectable difference is computed")
    resamples: int = doc_field(10_000, "bootstrap resamples")
    seed: int = doc_field(0, "bootstrap seed")
    confidence: float = doc_field(0.95, "level of every interval")

    def validate(self) -> list[str]:
        problems = []
        if not self.baseline:
            problems.append("baseline must name a recipe ('base' for the base snapshot)")
        for name in ("alpha", "power", "confidence"):
            value = getattr(self, name)
            if not 0 < value < 1:
                problems.append(f"{name}={value} must lie strictly between 0 and 1")
        if self.resamples < 1:
            problems.append(f"resamples={self.resamples} must be >= 1 (e.g. 10000)")
        return problems


@dataclass
class TaskVerdict:
    task: str
    best: dict[str, str]  # quant variant -> best recipe
    tied: dict[str, list[str]]  # quant variant -> recipes tied with the best after correction
    undetectable: list[tuple[str, str]]  # (recipe, quant) whose difference vs the baseline is below the MDD
    sentences: list[str]


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


def pair_outcomes(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Rows of two configurations on one task matched on (seed, index), or on index alone when one
    side has no seed (its single outcome then faces every seed of the other)."""
    cols = ["seed", "index", "correct", "score"]
    a, b = a[cols], b[cols]
    if a["seed"].notna().any() and b["seed"].notna().any():
        on = ["seed", "index"]
    elif b["seed"].isna().all():  # the unseeded side drops its seed column, the other keeps its own
        b, on = b.drop(columns="seed"), ["index"]
    else:
        a, on = a.drop(columns="seed"), ["index"]
    return a.merge(b, on=on, suffixes=("_a", "_b"))


def paired_test(a: pd.DataFrame, b: pd.DataFrame, settings: StudyAnalysisSettings) -> dict | None:
    """Pooled exact McNemar, paired bootstrap of B - A on per-item means, and the MDD; None when
    the two share no item."""
    pairs = pair_outcomes(a, b)
    if pairs.empty:
        return None
    mc = mcnemar_exact(pairs["correct_a"].to_numpy(), pairs["correct_b"].to_numpy())
    items = pairs.groupby("index")[["score_a", "score_b"]].mean()
    bs = paired_bootstrap(items["score_a"].to_numpy(), items["score_b"].to_numpy(), resamples=settings.resamples,
                          confidence=settings.confidence, seed=settings.seed)
    discordance = (mc.a_only + mc.b_only) / mc.n
    return {
        "seeds": int(pairs["seed"].nunique()), "n_items": int(len(items)), "n_pairs": mc.n,
        "a_only": mc.a_only, "b_only": mc.b_only, "discordance": discordance,
        "diff_correct": (mc.b_only - mc.a_only) / mc.n, "mcnemar_p": mc.p_value,
        "score_a": bs.mean_a, "score_b": bs.mean_b, "diff": bs.diff, "ci_low": bs.ci_low, "ci_high": bs.ci_high,
        "bootstrap_p": bs.p_value,
        "mdd": mcnemar_mdd(mc.n, discordance, alpha=settings.alpha, power=settings.power),
    }


def _unpaired_seeds(rows: pd.DataFrame, baseline: pd.DataFrame) -> list[int]:
    if baseline["seed"].isna().all() or rows["seed"].isna().all():
        return []
    return sorted(set(rows["seed"]) - set(baseline["seed"]))


def _configs(samples: pd.DataFrame) -> dict[tuple[str, str, str], pd.DataFrame]:
    return {key: g for key, g in samples.groupby(["task", "quant", "recipe"], sort=False)}


def rank_recipes(samples: pd.DataFrame, settings: StudyAnalysisSettings) -> pd.DataFrame:
    """Per task and PTQ variant ("none" first), recipes ranked by mean score over seeds."""
    rows = []
    for (task, quant, recipe), g in _configs(samples).items():
        per_seed = g.groupby("model")["score"].mean()
        per_item = g.groupby("index")["score"].mean()
        lo, hi = bootstrap_mean_interval(per_item.to_numpy(), resamples=settings.resamples,
                                         confidence=settings.confidence, seed=settings.seed)
        rows.append({"task": task, "quant": quant, "recipe": recipe, "baseline": recipe == settings.baseline,
                     "seeds": len(per_seed), "n_items": len(per_item), "mean": float(per_seed.mean()),
                     "seed_std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else np.nan,
                     "ci_low": lo, "ci_high": hi})
    df = pd.DataFrame(rows)
    order = {q: i for i, q in enumerate(quant_order(df["quant"]))}
    df = df.assign(_q=df["quant"].map(order), _m=-df["mean"])
    df = df.sort_values(["task", "_q", "_m", "recipe"], kind="stable").drop(columns=["_q", "_m"])
    df.insert(2, "rank", df.groupby(["task", "quant"]).cumcount() + 1)
    return df.reset_index(drop=True)


def _holm_flags(df: pd.DataFrame, alpha: float, *, within=None) -> pd.DataFrame:
    if df.empty:
        return df.assign(p_holm=pd.Series(dtype=float))
    if within is None:
        adjusted = holm(df["mcnemar_p"].to_numpy())
    else:
        adjusted = df.groupby(within)["mcnemar_p"].transform(lambda p: holm(p.to_numpy())).to_numpy()
    return df.assign(p_holm=adjusted)


def compare_to_baseline(samples: pd.DataFrame, ranking: pd.DataFrame, settings: StudyAnalysisSettings,
                        notes: list[str]) -> pd.DataFrame:
    """Every recipe x quant x task against the baseline; Holm over the whole family."""
    configs = _configs(samples)
    rows = []
    for r in ranking.itertuples(index=False):
        if r.recipe == settings.baseline:
            continue
        base_quant = r.quant if (r.task, r.quant, settings.baseline) in configs else NO_QUANT
        base = configs.get((r.task, base_quant, settings.baseline))
        if base is None:
            notes.append(f"{r.task}: baseline {settings.baseline!r} was not evaluated; {r.recipe} ({r.quant}) is not tested")
            continue
        test = paired_test(base, configs[(r.task, r.quant, r.recipe)], settings)
        if test is None:
            notes.append(f"{r.task}: {r.recipe} ({r.quant}) shares no item with the baseline; not tested")
            continue
        unpaired = _unpaired_seeds(configs[(r.task, r.quant, r.recipe)], base)
        if unpaired:
            notes.append(f"{r.task}: {r.recipe} ({r.quant}) seed(s) {', '.join(map(str, unpaired))} have no baseline "
                         f"seed to pair with; tested on seeds {', '.join(map(str, sorted(set(base['seed']))))}")
        test = _rename(test, "baseline", "recipe")
        rows.append({"task": r.task, "quant": r.quant, "recipe": r.recipe, "baseline_quant": base_quant, **test})
    df = _holm_flags(pd.DataFrame(rows, columns=_comparison_columns("baseline", first=["recipe", "baseline_quant"])),
                     settings.alpha)
    significant = df["p_holm"] <= settings.alpha
    return df.assign(significant=significant,
                     undetectable=~significant & (df["diff_correct"].abs() < df["mdd"]))


def compare_to_best(samples: pd.DataFrame, ranking: pd.DataFrame, settings: StudyAnalysisSettings) -> pd.DataFrame:
    """Within each task and PTQ variant, every recipe against the top-ranked one; Holm per task."""
    configs = _configs(samples)
    rows = []
    for (task, quant), g in ranking.groupby(["task", "quant"], sort=False):
        best = g.iloc[0]["recipe"]
        for recipe in g["recipe"].iloc[1:]:
            test = paired_test(configs[(task, quant, best)], configs[(task, quant, recipe)], settings)
            if test is not None:
                rows.append({"task": task, "quant": quant, "best": best, "recipe": recipe,
                             **_rename(test, "best", "recipe")})
    df = _holm_flags(pd.DataFrame(rows, columns=_comparison_columns("best", first=["best", "recipe"])),
                     settings.alpha, within="task")
    return df.assign(tied=df["p_holm"] > settings.alpha)


def _rename(test: dict, a: str, b: str) -> dict:
    names = {"a_only": f"{a}_only", "b_only": f"{b}_only", "score_a": f"{a}_score", "score_b": f"{b}_score"}
    return {names.get(k, k): v for k, v in test.items()}


def _comparison_columns(a: str, *, first: list[str]) -> list[str]:
    return ["task", "quant", *first, "seeds", "n_items", "n_pairs", f"{a}_only", "recipe_only", "discordance",
            "diff_correct", "mcnemar_p", f"{a}_score", "recipe_score", "diff", "ci_low", "ci_high", "bootstrap_p",
            "mdd"]


_RECOVERY_COLUMNS = ["task", "recipe", "quant", "source_quant", "models", "n_items", "n_pairs", "source_score",
                     "quant_score", "ratio", "ci_low", "ci_high", "source_only", "quant_only", "mcnemar_p"]


def quantization_recovery(samples: pd.DataFrame, settings: StudyAnalysisSettings, notes: list[str]) -> pd.DataFrame:
    """Each quantized model against its own unquantized source, pooled over the recipe's seeds."""
    by_model = {key: g for key, g in samples.groupby(["model", "task"], sort=False)}
    quantized = samples[samples["source_model"].notna()]
    rows = []
    for (task, quant, recipe), g in _configs(quantized).items():
        pairs, source_quants = [], set()
        for model, m in g.groupby("model", sort=True):
            source_name = str(m["source_model"].iloc[0])
            source = by_model.get((source_name, task))
            if source is None:
                notes.append(f"{task}: {model} has no evaluated source {source_name}; its recovery is not computed")
                continue
            source_quants.add(source["quant"].iloc[0])
            cols = ["index", "correct", "score"]
            pairs.append(source[cols].merge(m[cols], on="index", suffixes=("_s", "_q")).assign(model=model))
        pairs = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame()
        if pairs.empty:
            continue
        mc = mcnemar_exact(pairs["correct_s"].to_numpy(), pairs["correct_q"].to_numpy())
        items = pairs.groupby("index")[["score_s", "score_q"]].mean()
        ratio = paired_bootstrap(items["score_s"].to_numpy(), items["score_q"].to_numpy(),
                                 resamples=settings.resamples, confidence=settings.confidence, seed=settings.seed)
        rows.append({"task": task, "recipe": recipe, "quant": quant, "source_quant": ", ".join(sorted(source_quants)),
                     "models": pairs["model"].nunique(), "n_items": len(items), "n_pairs": mc.n,
                     "source_score": ratio.mean_a, "quant_score": ratio.mean_b, "ratio": ratio.ratio,
                     "ci_low": ratio.ratio_low, "ci_high": ratio.ratio_high, "source_only": mc.a_only,
                     "quant_only": mc.b_only, "mcnemar_p": mc.p_value})
    df = _holm_flags(pd.DataFrame(rows, columns=_RECOVERY_COLUMNS), settings.alpha)
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
    from ftlab.study.verdict import build_verdicts

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
    pareto = pareto_fronts(ranking, tidy)
    verdicts = build_verdicts(ranking, vs_baseline, vs_best, recovery, settings)
    return StudyAnalysis(settings, tidy, ranking, vs_baseline, vs_best, recovery, pareto, verdicts, notes)
