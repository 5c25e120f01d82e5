"""The study's verdict in plain words, one `TaskVerdict` per task, from the analysis tables.

Per task: the best recipe (unquantized first, then per PTQ variant) and which others are
statistically tied with it after Holm's correction; against the baseline, which recipes differ
significantly, which differences the study was too small to detect (not significant and below the
minimum detectable difference) and which agreed with it on every item; then each quantized
variant's recovery against its own source. Numbers are printed the way the report prints them:
scores to 4 decimals, intervals in brackets, p-values through `format_p` (never "0").
"""

from __future__ import annotations

import math

import pandas as pd

from ftlab.compare.stats import format_p
from ftlab.study.analysis import NO_QUANT, StudyAnalysisSettings, TaskVerdict


def _names(rows: pd.DataFrame, describe) -> str:
    return "; ".join(describe(r) for r in rows.itertuples(index=False))


def _label(recipe: str, quant: str) -> str:
    return f"`{recipe}`" if quant == NO_QUANT else f"`{recipe}` ({quant})"


def _best_sentences(task_rank: pd.DataFrame, vs_best: pd.DataFrame, alpha: float) -> tuple[dict, dict, list[str]]:
    best, tied, out = {}, {}, []
    for quant, g in task_rank.groupby("quant", sort=False):
        top = g.iloc[0]
        best[quant] = top.recipe
        spread = f", seed std {top.seed_std:.4f} over {top.seeds} seeds" if top.seeds > 1 else ""
        where = "Best recipe" if quant == NO_QUANT else f"Best recipe quantized with {quant}"
        line = f"{where}: `{top.recipe}`, score {top['mean']:.4f} [{top.ci_low:.4f}, {top.ci_high:.4f}]{spread}."
        if len(g) == 1:
            out.append(line[:-1] + " (the only recipe evaluated).")
            best[quant], tied[quant] = top.recipe, []
            continue
        tests = vs_best[vs_best["quant"] == quant]
        ties, below = tests[tests["tied"]], tests[~tests["tied"]]
        tied[quant] = list(ties["recipe"])

        def describe(r):
            return f"`{r.recipe}` {r.diff:+.4f}, adjusted p = {format_p(r.p_holm)}"

        if len(ties):
            line += f" Statistically tied with it after Holm correction: {_names(ties, describe)}."
        else:
            line += f" Every other recipe is significantly below it (Holm-adjusted McNemar p <= {alpha:g})."
        if len(ties) and len(below):
            line += f" Significantly below it: {_names(below, describe)}."
        out.append(line)
    return best, tied, out


def _baseline_sentences(tests: pd.DataFrame, settings: StudyAnalysisSettings) -> tuple[list, list[str]]:
    if tests.empty:
        return [], []
    out = []
    ci = f"{settings.confidence:.0%}"
    better = tests[tests["significant"] & (tests["diff_correct"] > 0)]
    worse = tests[tests["significant"] & (tests["diff_correct"] < 0)]
    same = tests[tests["discordance"] == 0]
    small = tests[tests["undetectable"]]
    other = tests[~tests["significant"] & ~tests["undetectable"] & (tests["discordance"] > 0)]

    def diff(r):
        return (f"{_label(r.recipe, r.quant)} {r.diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}], "
                f"adjusted p = {format_p(r.p_holm)}")

    def mdd(r):
        detectable = (f"minimum detectable {r.mdd:.4f}" if math.isfinite(r.mdd)
                      else "no difference detectable with so few disagreements")
        return f"{_label(r.recipe, r.quant)} observed {r.diff_correct:+.4f}, {detectable} (n = {r.n_pairs} pairs)"

    base = f"the baseline `{settings.baseline}`"
    if len(better):
        out.append(f"Significantly above {base} ({ci} paired-bootstrap interval of the score difference): "
                   f"{_names(better, diff)}.")
    if len(worse):
        out.append(f"Significantly below {base}: {_names(worse, diff)}.")
    if len(small):
        out.append(f"Too small to detect against {base} at this sample size (accuracy difference below the "
                   f"minimum detectable at alpha {settings.alpha:g}, power {settings.power:g}): {_names(small, mdd)}.")
    if len(other):
        out.append(f"Not significant after Holm correction against {base}: {_names(other, diff)}.")
    if len(same):
        out.append(f"Same outcome as {base} on every paired item: "
                   f"{', '.join(_label(r.recipe, r.quant) for r in same.itertuples(index=False))}.")
    small_keys = [(r.recipe, r.quant) for r in small.itertuples(index=False)]
    return small_keys, out


def _recovery_sentences(rows: pd.DataFrame, settings: StudyAnalysisSettings) -> list[str]:
    out = []
    for r in rows.itertuples(index=False):
        if math.isnan(r.ratio):
            out.append(f"`{r.recipe}` quantized with {r.quant}: its source scored 0, so no recovery ratio.")
            continue
        if r.significant:
            change = "a significant loss" if r.quant_score < r.source_score else "a significant gain"
        else:
            change = "no significant change"
        out.append(f"`{r.recipe}` quantized with {r.quant} keeps {r.ratio:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}] of "
                   f"its unquantized source's score ({r.quant_score:.4f} vs {r.source_score:.4f}): {change} "
                   f"(McNemar adjusted p = {format_p(r.p_holm)}).")
    return out


def build_verdicts(ranking: pd.DataFrame, vs_baseline: pd.DataFrame, vs_best: pd.DataFrame,
                   recovery: pd.DataFrame, settings: StudyAnalysisSettings) -> list[TaskVerdict]:
    verdicts = []
    for task, task_rank in ranking.groupby("task", sort=False):
        best, tied, sentences = _best_sentences(task_rank, vs_best[vs_best["task"] == task], settings.alpha)
        small, lines = _baseline_sentences(vs_baseline[vs_baseline["task"] == task], settings)
        sentences += lines + _recovery_sentences(recovery[recovery["task"] == task], settings)
        verdicts.append(TaskVerdict(task=task, best=best, tied=tied, undetectable=small, sentences=sentences))
    return verdicts


def verdict_text(verdicts: list[TaskVerdict]) -> str:
    """The verdict for the console: each task, then its sentences as bullets."""
    return "\n".join(f"{v.task}:\n" + "\n".join(f"  - {line}" for line in v.sentences) for v in verdicts)
