"""The study's verdict in plain words, one `TaskVerdict` per task, from the analysis tables.

Per task: with one seed per recipe, first what was tested (trained models on these items, not
recipes); the best recipe (unquantized first, then per PTQ variant) and which others are
statistically tied with it after Holm's correction; against the baseline, which recipes differ
significantly, which differences the study was too small to detect (not significant and below the
minimum detectable difference) and which agreed with it on every item; each quantized variant's
recovery against its own source; then the smallest recipe difference this design could detect,
set against `analysis.min_difference` when the study names one. A row whose inference is about
single trained models says so. Numbers are printed the way the report prints them: scores to 4
decimals, intervals in brackets, p-values through `format_p` (never "0").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ftlab.compare.stats import format_p
from ftlab.study.levels import MCNEMAR, MODEL, NO_QUANT, RECIPE
from ftlab.study.spec import StudyAnalysisSettings


@dataclass
class TaskVerdict:
    task: str
    best: dict[str, str]  # quant variant -> best recipe
    tied: dict[str, list[str]]  # quant variant -> recipes tied with the best after correction
    undetectable: list[tuple[str, str]]  # (recipe, quant) whose difference vs the baseline is below the MDD
    sentences: list[str]


ONE_SEED = ("One seed per recipe: every sentence below compares single trained models on these items, not "
            "recipes (another seed trains another model, and this study cannot say how much they differ); "
            "recipe-level claims need at least 2 seeds per recipe (train.seeds).")


def _names(rows: pd.DataFrame, describe) -> str:
    return "; ".join(describe(r) for r in rows.itertuples(index=False))


def _label(recipe: str, quant: str, single: bool = False) -> str:
    name = f"`{recipe}`" if quant == NO_QUANT else f"`{recipe}` ({quant})"
    return name + (" (one trained model)" if single else "")


def _single(r) -> bool:
    """A comparison row whose recipe side is one trained model (one seed): not a recipe claim."""
    return bool(r.seeded) and r.seeds == 1


def _score_line(top, where: str) -> str:
    interval = f"[{top.ci_low:.4f}, {top.ci_high:.4f}]"
    if top.level == RECIPE:
        return (f"{where}: `{top.recipe}`, score {top['mean']:.4f} {interval} over {top.seeds} seeds "
                f"(seed std {top.seed_std:.4f}; the interval covers seeds and items).")
    if top.level == MODEL:
        return (f"{where}: `{top.recipe}`, one trained model (seed {top.seed_list}), score {top['mean']:.4f} "
                f"{interval} on these items.")
    return f"{where}: `{top.recipe}`, score {top['mean']:.4f} {interval} (one model, no seed; items only)."


def _best_sentences(task_rank: pd.DataFrame, vs_best: pd.DataFrame, alpha: float) -> tuple[dict, dict, list[str]]:
    best, tied, out = {}, {}, []
    for quant, g in task_rank.groupby("quant", sort=False):
        top = g.iloc[0]
        best[quant] = top.recipe
        where = "Best recipe" if quant == NO_QUANT else f"Best recipe quantized with {quant}"
        line = _score_line(top, where)
        if len(g) == 1:
            out.append(line[:-1] + " (the only recipe evaluated).")
            best[quant], tied[quant] = top.recipe, []
            continue
        tests = vs_best[vs_best["quant"] == quant]
        ties, below = tests[tests["tied"]], tests[~tests["tied"]]
        tied[quant] = list(ties["recipe"])

        def describe(r):
            return f"{_label(r.recipe, NO_QUANT, _single(r))} {r.diff:+.4f}, adjusted p = {format_p(r.p_holm)}"

        if len(ties):
            line += f" Statistically tied with it after Holm correction: {_names(ties, describe)}."
        else:
            others = "recipe" if (tests["level"] == RECIPE).all() else "trained model"
            line += f" Every other {others} is significantly below it (Holm-adjusted p <= {alpha:g})."
        if len(ties) and len(below):
            line += f" Significantly below it: {_names(below, describe)}."
        out.append(line)
    return best, tied, out


def _baseline_sentences(tests: pd.DataFrame, settings: StudyAnalysisSettings) -> tuple[list, list[str]]:
    if tests.empty:
        return [], []
    out = []
    ci = f"{settings.confidence:.0%}"
    better = tests[tests["significant"] & (tests["diff"] > 0)]
    worse = tests[tests["significant"] & (tests["diff"] <= 0)]
    same = tests[tests["discordance"] == 0]
    small = tests[tests["undetectable"]]
    other = tests[~tests["significant"] & ~tests["undetectable"] & (tests["discordance"] > 0)]

    def diff(r):
        return (f"{_label(r.recipe, r.quant, _single(r))} {r.diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}], "
                f"adjusted p = {format_p(r.p_holm)}")

    def mdd(r):
        if r.test == MCNEMAR:
            detectable = (f"minimum detectable {r.mdd:.4f}" if math.isfinite(r.mdd)
                          else "no difference detectable with so few disagreements")
            return f"{_label(r.recipe, r.quant, _single(r))} observed {r.diff_correct:+.4f}, {detectable} (n = {r.n_pairs} pairs)"
        detectable = (f"minimum detectable {r.mdd:.4f}" if math.isfinite(r.mdd)
                      else "no difference on the score scale detectable")
        return (f"{_label(r.recipe, r.quant, _single(r))} observed {r.diff:+.4f}, {detectable} "
                f"({r.seeds} seed{'s' if r.seeds > 1 else ''} x {r.n_items} items)")

    base = f"the baseline `{settings.baseline}`"
    if len(better):
        out.append(f"Significantly above {base} ({ci} interval of the score difference): {_names(better, diff)}.")
    if len(worse):
        out.append(f"Significantly below {base}: {_names(worse, diff)}.")
    if len(small):
        out.append(f"Too small to detect against {base} with this design (not significant, and the observed "
                   f"difference is below the minimum detectable at alpha {settings.alpha:g}, power "
                   f"{settings.power:g}, seed spread included): {_names(small, mdd)}.")
    if len(other):
        out.append(f"Not significant after Holm correction against {base}: {_names(other, diff)}.")
    if len(same):
        out.append(f"Same outcome as {base} on every paired item: "
                   f"{', '.join(_label(r.recipe, r.quant, _single(r)) for r in same.itertuples(index=False))}.")
    small_keys = [(r.recipe, r.quant) for r in small.itertuples(index=False)]
    return small_keys, out


def _recovery_sentences(rows: pd.DataFrame) -> list[str]:
    out = []
    for r in rows.itertuples(index=False):
        if math.isnan(r.ratio):
            out.append(f"`{r.recipe}` quantized with {r.quant}: its source scored 0, so no recovery ratio.")
            continue
        if r.significant:
            change = "a significant loss" if r.quant_score < r.source_score else "a significant gain"
        else:
            change = "no significant change"
        over = f" over its {r.models} seeds" if r.level == RECIPE else ""
        out.append(f"`{r.recipe}` quantized with {r.quant} keeps {r.ratio:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}] of "
                   f"its unquantized source's score{over} ({r.quant_score:.4f} vs {r.source_score:.4f}): {change} "
                   f"({r.test} adjusted p = {format_p(r.p_holm)}).")
    return out


def _sensitivity_sentences(vs_best: pd.DataFrame, vs_baseline: pd.DataFrame,
                           settings: StudyAnalysisSettings) -> list[str]:
    """The smallest recipe difference this design could detect, from the recipe-level comparisons
    between trained recipes (against the best), else against the baseline."""
    rows = vs_best[(vs_best["seeds"] >= 2) & (vs_best["best_seeds"] >= 2) & vs_best["mdd"].notna()]
    what = "between recipes"
    if rows.empty:
        rows = vs_baseline[(vs_baseline["level"] == RECIPE) & vs_baseline["mdd"].notna()]
        what = "against the baseline"
    if rows.empty:
        return []
    lo, hi, mid = rows["mdd"].min(), rows["mdd"].max(), float(rows["mdd"].median())
    seeds = ", ".join(str(s) for s in sorted(set(rows["seeds"])))
    items = ", ".join(str(n) for n in sorted(set(rows["n_items"])))

    def show(v: float) -> str:
        return f"{v:.4f}" if math.isfinite(v) else "none on the score scale"

    span = show(lo) if lo == hi else f"{show(lo)} to {show(hi)} (median {show(mid)})"
    line = (f"Sensitivity: with {seeds} seeds per recipe and {items} items, the smallest score difference "
            f"{what} detectable with power {settings.power:g} at alpha {settings.alpha:g}, seed spread "
            f"included, was {span}.")
    if settings.min_difference is not None:
        d = settings.min_difference
        if mid <= d:  # an infinite MDD (none detectable) never is
            line += f" The study was sized for the difference that matters ({d:g})."
        else:
            line += (f" That is larger than the difference that matters ({d:g}): differences of that size could "
                     f"go undetected; `ftlab study plan` gives the seeds and items that would detect it.")
    return [line]


def build_verdicts(ranking: pd.DataFrame, vs_baseline: pd.DataFrame, vs_best: pd.DataFrame,
                   recovery: pd.DataFrame, settings: StudyAnalysisSettings) -> list[TaskVerdict]:
    verdicts = []
    for task, task_rank in ranking.groupby("task", sort=False):
        levels = set(task_rank["level"])
        sentences = [ONE_SEED] if MODEL in levels and RECIPE not in levels else []
        best, tied, lines = _best_sentences(task_rank, vs_best[vs_best["task"] == task], settings.alpha)
        small, baseline_lines = _baseline_sentences(vs_baseline[vs_baseline["task"] == task], settings)
        sentences += lines + baseline_lines + _recovery_sentences(recovery[recovery["task"] == task])
        sentences += _sensitivity_sentences(vs_best[vs_best["task"] == task], vs_baseline[vs_baseline["task"] == task],
                                            settings)
        verdicts.append(TaskVerdict(task=task, best=best, tied=tied, undetectable=small, sentences=sentences))
    return verdicts


def verdict_text(verdicts: list[TaskVerdict]) -> str:
    """The verdict for the console: each task, then its sentences as bullets."""
    return "\n".join(f"{v.task}:\n" + "\n".join(f"  - {line}" for line in v.sentences) for v in verdicts)

